"""`python -m luna.crossval`: folds trained and predicted in turn, resumed, merged and scored once."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from luna.luna16.scoring import evaluate_submission
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def crossval(*args):
    result = subprocess.run(
        [sys.executable, "-m", "luna.crossval", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # two folds trained end to end: 48 s
def test_folds_run_in_turn_resume_and_merge_into_one_scored_submission(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "unused")
    output = tmp_path / "cv"
    common = ["--config", str(config), "--output", str(output), "--bootstrap", "50"]
    log = crossval(*common, "--folds", "0,1")
    for fold in (0, 1):
        predicted = rows(output / f"fold{fold}" / "predictions.csv")
        subset = {p.stem for p in (phantom_dir / f"subset{fold}").glob("*.mhd")}
        assert (
            predicted and {row["seriesuid"] for row in predicted} == subset
        )  # every held-out scan, only those
    merged = rows(output / "predictions.csv")
    assert len(merged) == sum(len(rows(output / f"fold{k}" / "predictions.csv")) for k in (0, 1))
    record = json.loads((output / "crossval.json").read_text())["candidates"]
    assert record["folds"] == [0, 1] and set(record["per_fold"]) == {"0", "1"}
    expected = evaluate_submission(
        output / "predictions.csv", phantom_dir, subsets=[0, 1], bootstrap_samples=0
    )
    assert record["merged"]["cpm"] == pytest.approx(expected.result.cpm)
    assert record["merged"]["cpm_ci"] is not None and (output / "froc.png").is_file()
    assert "per-fold CPM" in log and "only folds [0, 1] have predictions" in log

    # a finished fold is skipped; a trained fold that lost its predictions only predicts again
    (output / "fold1" / "predictions.csv").unlink()
    versions = sorted((output / "fold1").glob("version_*"))
    log = crossval(*common, "--folds", "0,1")
    assert "fold 0: done" in log and "fold 1: predicting" in log and "resuming" not in log, log
    assert len(sorted((output / "fold1").glob("version_*"))) == len(versions)  # predict writes no run folder
    assert not list((output / "fold0").glob(f"version_{len(versions)}"))

    # a fold whose training was cut off resumes from its newest checkpoint
    (output / "fold1" / "predictions.csv").unlink()
    (output / "fold1" / "trained.json").unlink()
    log = crossval(*common, "--folds", "1", "--no_merge")
    assert "fold 1: resuming" in log and "last.ckpt" in log
    assert (output / "fold1" / "predictions.csv").is_file()


def test_merge_only_with_nothing_predicted_says_so(tmp_path, phantom_dir, cache_root):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "unused")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.crossval",
            "--merge_only",
            "--config",
            str(config),
            "--output",
            str(tmp_path / "empty"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "no fold of" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "luna.crossval", "--folds", "12"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and "folds must be among 0-9" in bad.stderr
