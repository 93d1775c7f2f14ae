"""The command line as users run it: `python -m luna.fit` (LightningCLI) on phantom data."""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from luna.cli.fit import main
from tests.helpers import tiny_config
from tests.oracles import candidate_of


@pytest.fixture
def config(phantom_dir, cache_root, tmp_path):
    return tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")


def run_dir(tmp_path, version=0):
    return tmp_path / "runs" / f"version_{version}"


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_python_m_luna_fit_trains_end_to_end(config, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "luna.fit", "--config", str(config), "--data.batch_size=4"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir(tmp_path)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best-epoch000-step*.ckpt"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["init_args"]["batch_size"] == 4  # the override, in the resolved config
    assert saved["data"]["init_args"]["width_irc"] == [32, 48, 48]  # model.width_irc is linked to it
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert any(row.get("val/f1") for row in rows) and any(row.get("train/f1") for row in rows)
    assert sorted((out / "figures").glob("val_*-epoch000.png"))


def test_print_config_loads_back(config, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--model.label_smoothing=0.1", "--print_config"])
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    assert yaml.safe_load(printed)["model"]["init_args"]["label_smoothing"] == 0.1
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed


SHIPPED = sorted(
    path.relative_to(Path(__file__).resolve().parents[1] / "luna" / "configs").as_posix()
    for path in (Path(__file__).resolve().parents[1] / "luna" / "configs").rglob("*.yaml")
    if path.parent.name != "search"  # search files: tests/test_tune.py runs them
)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_resolves_and_loads_back(name, tmp_path, capsys):
    """Each config (and preset, on top of the default) as a user first gives it: ``--print_config``
    resolves it, names its classes, and what it prints is a config luna reads again. The configs'
    runs are in their own tests (training, segmentation, points, presets)."""
    with pytest.raises(SystemExit):
        main(["--config", f"configs/{name}", "--print_config"])
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)
    assert resolved["model"]["class_path"] and resolved["data"]["class_path"], name
    (tmp_path / "printed.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed


def test_resume_continues_from_the_saved_epoch_and_reruns_do_not_abort(config, tmp_path):
    main(["--config", str(config)])
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    main(["--config", str(config), "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    resumed = run_dir(tmp_path, 1)
    checkpoint = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 4
    epochs = {row["epoch"] for row in csv.DictReader((resumed / "metrics.csv").open()) if row["epoch"]}
    assert epochs == {"1"}


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_validate_test_and_predict_are_subcommands(config, tmp_path, phantom_dir, cache_root):
    main(["--config", str(config)])
    checkpoint = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    cli = main(["validate", "--config", str(config), f"--ckpt_path={checkpoint}"])
    assert "val/f1" in cli.trainer.callback_metrics
    cli = main(["test", "--config", str(config), f"--ckpt_path={checkpoint}"])
    assert cli.trainer.callback_metrics["test/samples"] == len(cli.datamodule.val_dataset)
    out = tmp_path / "predictions.csv"
    cli = main(["predict", "--config", str(config), f"--ckpt_path={checkpoint}", f"--predictions.path={out}"])
    rows = list(csv.DictReader(out.open()))
    dataset = cli.datamodule.eval_dataset
    assert len(rows) == len(dataset)
    assert list(rows[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    expected = [candidate_of(cli.datamodule, int(k)) for k in dataset.positions]
    assert [(r["seriesuid"], float(r["coordX"]), float(r["coordZ"])) for r in rows] == [
        (c.series_uid, c.center_xyz[0], c.center_xyz[2]) for c in expected
    ]
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)


def test_last_checkpoint_is_the_last_epoch_when_the_monitor_never_improves(config, tmp_path):
    # "epoch" in mode "min" is best at epoch 0 and never improves after it.
    main(
        [
            "--config",
            str(config),
            "--trainer.max_epochs=3",
            "--checkpoint.monitor=epoch",
            "--checkpoint.mode=min",
        ]
    )
    checkpoints = run_dir(tmp_path) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-epoch000-step2.ckpt"]


def test_val_cpm_equals_the_evaluation_of_the_predictions_and_can_be_monitored(
    config, tmp_path, phantom_dir, caplog
):
    from luna.luna16.scoring import evaluate_submission, predicted_scans

    main(["--config", str(config), "--checkpoint.monitor=val/cpm", "--checkpoint.mode=max"])
    run = run_dir(tmp_path)
    assert list((run / "checkpoints").glob("best-epoch000-*.ckpt"))
    checkpoint = run / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):
        cli = main(["validate", "--config", str(config), f"--ckpt_path={checkpoint}"])
    cpm = float(cli.trainer.callback_metrics["val/cpm"])
    validation = run / "validate" / "version_0"  # in the checkpoint's own run
    assert (validation / "figures" / "val_froc-epoch000.png").is_file() and (
        validation / "metrics.csv"
    ).is_file()
    assert any(f"written to {validation}" in record.getMessage() for record in caplog.records)
    cli = main(["predict", "--config", str(config), f"--ckpt_path={checkpoint}"])
    predictions = run / "predictions.csv"
    reference = cli.datamodule.evaluation_reference("test")
    predicted = predicted_scans(predictions)  # what predict recorded beside the CSV: the validation scans
    assert predicted is not None and sorted(predicted[0]) == sorted(reference.scans)
    evaluation = evaluate_submission(predictions, phantom_dir, bootstrap_samples=0, predicted=predicted)
    assert evaluation.result.cpm == pytest.approx(cpm, abs=1e-6)
    assert 0 <= cpm <= 1 and evaluation.result.counts.nodules > 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]  # no run folder of its own
    # luna.evaluate needs only the file: the data folder and the scans are the ones predict recorded
    from luna.cli.evaluate import main as evaluate

    assert evaluate([str(predictions), "--bootstrap", "0"]) == 0
    report = json.loads((run / "froc.json").read_text())
    assert report["cpm"] == pytest.approx(cpm, abs=1e-6) and report["scans"] == len(reference.scans)
    with caplog.at_level(logging.WARNING):  # scored against every scan of the folder instead: said loudly
        whole = evaluate_submission(predictions, phantom_dir, bootstrap_samples=0)
    assert whole.result.counts.scans > evaluation.result.counts.scans
    assert any(
        "have no row in" in record.getMessage() and "count as missed" in record.getMessage()
        for record in caplog.records
    )


def test_candidate_split_logs_no_cpm(config, tmp_path):
    cli = main(["--config", str(config), "--data.split_by=row"])
    assert "val/cpm" not in cli.trainer.callback_metrics and "val/f1" in cli.trainer.callback_metrics


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_every_output_of_a_run_lands_in_one_folder_under_default_root_dir(config, tmp_path):
    main(["--config", str(config), "--loggers=[csv, tensorboard]"])
    run = run_dir(tmp_path)
    assert {p.name for p in run.iterdir()} >= {
        "metrics.csv",
        "hparams.yaml",
        "config.yaml",
        "checkpoints",
        "figures",
        "tensorboard",
    }
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    main(["predict", "--config", str(config), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert (run / "predictions.csv").is_file() and (
        run / "predictions.json"
    ).is_file()  # beside its checkpoint
    main(["test", "--config", str(config), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert (run / "test" / "version_0" / "metrics.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["version_0"]
    with pytest.raises(ValueError, match="'csv' is required"):
        main(["--config", str(config), "--loggers=[tensorboard]"])


def test_a_plain_install_ships_the_configs(tmp_path):
    import shutil
    import zipfile

    from luna.cli.lightning_cli import DEFAULT_CONFIG

    assert DEFAULT_CONFIG.is_file()
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: setuptools writes build/ beside the sources
    shutil.copytree(root / "luna", source / "luna", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("luna-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(root / "luna").as_posix() for p in (root / "luna" / "configs").rglob("*.yaml")}
    assert shipped and {f"luna/{name}" for name in shipped} <= names


def test_the_console_says_how_the_run_went_and_names_existing_files(config, tmp_path, caplog, capfd):
    import logging
    import re

    with caplog.at_level(logging.INFO):  # pytest's captured stdout is a file, not a terminal
        cli = main(
            [
                "--config",
                str(config),
                "--trainer.max_epochs=2",
                "--loggers=[csv, tensorboard]",
                "--trainer.enable_progress_bar=null",
            ]
        )
    assert (
        cli.trainer.progress_bar_callback is None
    )  # its last frame would land after the summary in a log file
    printed = "".join(capfd.readouterr()) + caplog.text
    assert "| LunaModel " in printed and "LunaMod…" not in printed  # the plain summary, not Rich's 80 columns
    assert "`Trainer.fit` stopped" not in printed and "`Trainer.fit` stopped" not in caplog.text
    assert "LightningCLI's args parameter" not in printed and "log_every_n_steps" not in printed
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "output is not a terminal: no progress bar" in text
    assert re.search(r"epoch 0/1: val F1 [\d.]+ \(at P >= 0\.5\) \| AUROC [\d.]+ .*\| CPM [\d.]+", text), text
    assert re.search(r"epoch 1/1: val F1", text)
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("training finished"))
    assert "(max_epochs=2 reached): 2 epochs" in summary and re.search(
        r"best epoch \d by val/cpm [\d.]+: F1", summary
    )
    paths = dict(re.findall(r"^(best checkpoint|last checkpoint|run folder): (.+)$", summary, re.M))
    assert set(paths) == {"best checkpoint", "last checkpoint", "run folder"}
    assert all(Path(path).exists() for path in paths.values())
    assert f"tensorboard --logdir {tmp_path / 'runs'}" in summary


def test_predict_says_where_it_wrote_and_writes_full_precision(config, tmp_path, caplog):
    import logging

    main(["--config", str(config)])
    out = tmp_path / "predictions.csv"
    with caplog.at_level(logging.INFO, logger="luna"):
        main(
            [
                "predict",
                "--config",
                str(config),
                f"--ckpt_path={run_dir(tmp_path) / 'checkpoints' / 'last.ckpt'}",
                f"--predictions.path={out}",
            ]
        )
    rows = list(csv.DictReader(out.open()))
    assert any(f"predictions: {len(rows)} rows written to {out}" == r.getMessage() for r in caplog.records)
    # float32 probabilities written in full: 101 of them tied at "1.000000" would empty a scan under the cap
    assert max(len(r["probability"]) for r in rows) > 9
    about = yaml.safe_load(out.with_suffix(".json").read_text())
    assert about["rows"] == len(rows) and about["checkpoint"].endswith("last.ckpt")


def test_the_debug_preset_writes_nothing(config, tmp_path):
    main(["--config", str(config), "--config", "configs/presets/debug.yaml"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_how_to_evaluate_is_this_commands_choice_not_the_checkpoints(config, tmp_path, caplog):
    import logging

    main(["--config", str(config)])
    checkpoint = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    plain = main(["validate", "--config", str(config), f"--ckpt_path={checkpoint}"]).trainer.callback_metrics
    with caplog.at_level(logging.INFO, logger="luna"):
        cli = main(
            [
                "validate",
                "--config",
                str(config),
                f"--ckpt_path={checkpoint}",
                "--evaluation.prior_correction=true",
                "--evaluation.tta_flips=[[], [2]]",
            ]
        )
    assert cli.model.evaluation.prior_correction and cli.model.evaluation.flips == [(), (2,)]
    assert any(r.getMessage().startswith("prior correction: logits shifted by") for r in caplog.records)
    corrected = cli.trainer.callback_metrics
    assert float(corrected["val/calibration_error"]) != float(plain["val/calibration_error"])


def test_help_documents_luna_and_names_lightnings_options_in_a_paragraph(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    short = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help_full"])
    full = capsys.readouterr().out
    assert len(short.splitlines()) < 350 < 600 < len(full.splitlines())
    assert "``" not in short and "``" not in full  # reST markup is for the docs, not the terminal
    trainer = short[short.index("Lightning's Trainer:") :]
    assert "max_epochs, min_epochs" in trainer and "--trainer.max_epochs MAX_EPOCHS" not in short
    assert "--trainer.max_epochs MAX_EPOCHS" in full
    assert "--evaluation.threshold THRESHOLD" in short and "--checkpoint.fallback_monitor" in short
    assert "--data.help LunaDataModule (or PointsDataModule" in " ".join(short.split())
    with pytest.raises(SystemExit):
        main(["--data.help", "PointsDataModule"])
    assert "--data.points_csv POINTS_CSV" in capsys.readouterr().out  # a data class's own options, in full
    assert "Runs the full optimization" not in short and short.split("\n\n")[1].startswith(
        "Train (and validate"
    )
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    validate = " ".join(capsys.readouterr().out.split())
    assert (
        "--ckpt_path CKPT_PATH the checkpoint to evaluate (a run's checkpoints/last.ckpt or best-*.ckpt)"
        in validate
    )
    assert '"registry"' not in validate


def test_prepare_help_shows_the_data_options(capsys):
    from luna.cli.prepare import main as prepare

    with pytest.raises(SystemExit):
        prepare(["--help"])
    text = capsys.readouterr().out
    assert (
        "--data.data_dir DATA_DIR" in text
        and "--data.spacing_mm" in text
        and "--data.build_processes" in text
    )
    assert "--model." not in text and "--wandb_checkpoints" not in text and "--trainer." not in text


def test_prepare_builds_the_cache_fit_then_reuses_and_trains_nothing(phantom_dir, tmp_path, caplog):
    import logging

    from luna.cli.prepare import main as prepare

    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, tmp_path / "cache", tmp_path / "runs")
    datamodule = prepare(["--config", str(config), "--data.build_processes=1"])
    assert (
        datamodule.cache.path / "manifest.json"
    ).is_file() and datamodule.cache.path.parent == tmp_path / "cache"
    assert not (tmp_path / "runs").exists()  # no Trainer, no run folder
    with caplog.at_level(logging.INFO):
        main(["--config", str(config), "--trainer.max_steps=1", "--trainer.limit_val_batches=1"])
    assert f"crop cache {datamodule.cache.path} is complete; reusing it" in caplog.text
