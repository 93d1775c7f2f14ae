"""Experiments beyond one run: W&B tables of the evaluated candidates (offline, read back from
what the run wrote), and ensembles of checkpoints (several seeds, the folds of a cross-validation)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from luna.callbacks.candidate_table import COLUMNS
from luna.cli.fit import main
from luna.luna16.datamodule import LunaDataModule
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def staged_tables(data_dir: Path) -> list[dict]:
    """The distinct tables W&B staged for upload (an offline run keeps them until ``wandb sync``;
    it may stage one table twice, for the run's history and as an artifact)."""
    tables = {}
    for path in (data_dir / "artifacts" / "staging").iterdir():
        if path.read_bytes()[:1] == b"{":
            content = json.loads(path.read_text())
            if content.get("_type") == "table":
                tables[json.dumps(content, sort_keys=True)] = content
    return list(tables.values())


@pytest.mark.e2e
def test_a_wandb_run_offline_gets_a_table_of_candidates_with_their_slices_and_its_checkpoints(
    phantom_dir, cache_root, tmp_path
):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    data_dir = (
        tmp_path / "runs" / "version_0" / "wandb" / "staging"
    )  # inside the run: nothing left outside it
    env = {
        **{k: v for k, v in os.environ.items() if k != "WANDB_DATA_DIR"},
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.fit",
            "--config",
            str(config),
            "--loggers=[csv, wandb]",
            "--candidate_table.max_rows=12",
            "--candidate_table.mistakes=3",
            "--wandb_checkpoints=true",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tables = staged_tables(data_dir)
    assert len(tables) == 1  # one validation, one table
    table = tables[0]
    assert table["columns"] == COLUMNS
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in table["data"]]
    dm = LunaDataModule(data_dir=phantom_dir, cache_dir=cache_root)
    dm.prepare_data()
    dm.setup()
    labels = dm.val_dataset.labels
    positives = [row for row in rows if row["label"] == "nodule"]
    assert len(positives) == min(int(labels.sum()), 12) > 0  # every positive of the validation
    assert len(rows) == min(12, len(labels))  # filled up to the cap with mistakes and a sample
    for row in rows:
        assert row["image_id"].startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.")
        assert row["correct"] == (row["label"] == row["predicted"]) and 0 <= row["probability"] <= 1
        for plane in ("axial", "coronal", "sagittal"):
            assert row[plane]["_type"] == "image-file" and row[plane]["path"].endswith(".png")
    staged = [path for path in (data_dir / "artifacts" / "staging").iterdir()]
    pngs = {path.read_bytes() for path in staged if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"}
    assert len(pngs) > len(rows)  # the slices themselves (three a row, a few alike)
    assert any(
        path.read_bytes()[:2] == b"PK" and path.stat().st_size > 100_000 for path in staged
    )  # a checkpoint
    run = next((tmp_path / "runs" / "version_0" / "wandb").glob("offline-run-*"))
    assert (run / "files" / "media" / "images" / "val").is_dir()  # the figures of the run
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["version_0"]


def test_the_table_keeps_every_positive_the_most_confident_mistakes_and_a_seeded_sample():
    import torch

    from luna.callbacks.candidate_table import CandidateTable

    def batch(labels, probs):
        size = len(labels)
        return (
            {
                "label": torch.tensor(labels),
                "index": torch.arange(size),
                "crop": torch.zeros(size, 1, 4, 6, 6),
                "offset_irc": torch.full((size, 3), 2),
                "window_irc": torch.zeros(size, 3, dtype=torch.long),
            },
            torch.tensor([[1 - p, p] for p in probs]),
        )

    table = CandidateTable(max_rows=6, mistakes=2, seed=1)
    labels = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    probs = [0.9, 0.95, 0.6, 0.8, 0.1, 0.2, 0.3, 0.05, 0.7, 0.4]  # negatives above 0.5 are mistakes
    table._keep(*batch(labels, probs), (-1000.0, 400.0))
    kept = {row.index for row in table._positives} | {entry[2].index for entry in table._mistakes}
    assert kept == {0, 9, 1, 3}  # both positives; the mistakes at 0.95 and 0.8, not 0.7 or 0.6
    assert {row.index for row in table._sample} == {2, 4, 5, 6, 7, 8}  # the rest, 0.6 and 0.7 included
    table._keep(
        *batch([0] * 30, [0.1] * 30), (-1000.0, 400.0)
    )  # more than max_rows: a seeded sample of all of them stays
    assert len(table._sample) == 6 and table._offered == 36
    assert all(row.slices[0].dtype == np.uint8 and row.slices[0].shape == (6, 6) for row in table._sample)


@pytest.fixture(scope="module")
def two_seeds(phantom_dir, cache_root, tmp_path_factory):
    """A tiny configuration trained from two seeds: its config and the two last checkpoints."""
    folder = tmp_path_factory.mktemp("seeds")
    config = tiny_config(folder / "tiny.yaml", phantom_dir, cache_root, folder / "runs")
    checkpoints = []
    for seed in (1, 2):
        main(
            [
                "--config",
                str(config),
                f"--seed_everything={seed}",
                f"--trainer.default_root_dir={folder / str(seed)}",
            ]
        )
        checkpoints.append(folder / str(seed) / "version_0" / "checkpoints" / "last.ckpt")
    return config, checkpoints


def probabilities(path: Path) -> dict[tuple, float]:
    with path.open() as handle:
        return {(r["seriesuid"], r["coordX"]): float(r["probability"]) for r in csv.DictReader(handle)}


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_an_ensemble_predicts_the_mean_probability_of_its_members(two_seeds, tmp_path):
    config, (first, second) = two_seeds
    out = {}
    for name, extra in (
        ("first", [f"--ckpt_path={first}"]),
        ("second", [f"--ckpt_path={second}"]),
        ("both", [f"--ckpt_path={first}", f"--evaluation.ensemble=[{second}]"]),
    ):
        path = tmp_path / f"{name}.csv"
        main(["predict", "--config", str(config), *extra, f"--predictions.path={path}"])
        out[name] = probabilities(path)
    assert out["both"].keys() == out["first"].keys() and len(out["both"]) > 10
    for key, value in out["both"].items():
        assert value == pytest.approx((out["first"][key] + out["second"][key]) / 2, abs=1e-6)
    assert any(
        abs(out["first"][key] - out["second"][key]) > 1e-3 for key in out["both"]
    )  # two different models
    cli = main(
        ["validate", "--config", str(config), f"--ckpt_path={first}", f"--evaluation.ensemble=[{second}]"]
    )
    assert 0 <= cli.trainer.callback_metrics["val/auroc"] <= 1


def test_an_ensemble_of_another_model_or_in_fit_is_one_line(two_seeds, tmp_path, capsys, monkeypatch):
    from luna.cli.fit import cli

    config, (first, second) = two_seeds
    other = tmp_path / "other.yaml"
    changed = yaml.safe_load(config.read_text())
    changed["data"]["width_irc"] = [16, 32, 32]
    other.write_text(yaml.safe_dump(changed))
    for args, message in (
        (
            ["fit", "--config", str(config), f"--evaluation.ensemble=[{second}]"],
            "error: evaluation.ensemble averages trained models in validate, test and predict",
        ),
        (
            ["validate", "--config", str(other), f"--evaluation.ensemble=[{second}]"],
            f"error: checkpoint {second} was trained on crops of 32x48x48 native voxels",
        ),
    ):
        monkeypatch.setattr(sys, "argv", ["luna", *args])
        with pytest.raises(SystemExit) as stopped:
            cli()
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(message), err[-1000:]


@pytest.mark.slow  # a cross-validation trained, then its ensemble: 46 s
def test_the_folds_of_a_cross_validation_predict_together(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "unused")
    output = tmp_path / "cv"

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "luna.crossval",
            "--config",
            str(config),
            "--output",
            str(output),
            *args,
        ]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    assert run("--folds", "0,1", "--no_merge").returncode == 0
    done = run("--ensemble", "--data.eval_images=all")
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = output / "ensemble" / "predictions.csv"
    rows = list(csv.DictReader(predictions.open()))
    about = json.loads(predictions.with_suffix(".json").read_text())
    assert len(rows) == about["rows"] > 100
    assert "evaluating an ensemble of 2 models" in done.stderr
