"""A checkpoint knows the crops it was trained on: sizes, millimetre spacings and intensities.

Evaluating a network on crops it was not trained on gives plausible, wrong probabilities without
any error (the shapes agree). Every command that loads a checkpoint for these data (validate,
test, predict, a resumed fit, the members of an ensemble) compares what the checkpoint records
with what the data cuts, and stops with one line naming the option.
"""

import csv

import pytest
import torch

from luna.cli.fit import main
from tests.helpers import last_error_line, run_cli, tiny_config

MM = "[1.25, 0.7, 0.7]"


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """A run trained on crops in millimetres, and one on native crops (same sizes)."""
    folder = tmp_path_factory.mktemp("crops")
    config = tiny_config(
        folder / "tiny.yaml", phantom_dir, folder / "cache", folder / "runs", width_irc=[16, 32, 32]
    )
    main(["--config", str(config), f"--data.spacing_mm={MM}", f"--trainer.default_root_dir={folder / 'mm'}"])
    main(["--config", str(config), f"--trainer.default_root_dir={folder / 'native'}"])
    return (
        config,
        folder / "mm" / "version_0" / "checkpoints" / "last.ckpt",
        folder / "native" / "version_0" / "checkpoints" / "last.ckpt",
    )


def test_the_checkpoint_records_its_spacing_and_intensities(trained):
    _, mm, native = trained
    recorded = torch.load(mm, weights_only=False)["hyper_parameters"]
    assert recorded["input_spacings_mm"] == [[1.25, 0.7, 0.7]] and recorded["input_intensity"] == [
        -1000,
        1000,
        1,
    ]
    assert torch.load(native, weights_only=False)["hyper_parameters"]["input_spacings_mm"] == [None]


@pytest.mark.parametrize("command", ["predict", "validate", "test", "fit"])
def test_a_millimetre_checkpoint_on_native_crops_is_one_line_naming_spacing_mm(
    trained, command, capsys, monkeypatch, tmp_path
):
    config, mm, _ = trained
    code, stderr = run_cli(
        [
            command,
            "--config",
            str(config),
            f"--ckpt_path={mm}",
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        capsys,
        monkeypatch,
    )
    line = last_error_line(stderr)
    assert code == 2 and "Traceback" not in stderr
    assert (
        "was trained on crops of 16x32x32 voxels at 1.25x0.7x0.7 mm" in line
        and "data.spacing_mm=[1.25, 0.7, 0.7]" in line
    )
    assert not (tmp_path / "predictions.csv").exists()


def test_given_its_spacing_the_checkpoint_predicts(trained, tmp_path):
    config, mm, _ = trained
    out = tmp_path / "p.csv"
    main(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={mm}",
            f"--data.spacing_mm={MM}",
            f"--predictions.path={out}",
        ]
    )
    assert len(list(csv.DictReader(out.open()))) > 10


def test_an_ensemble_never_mixes_crops(trained, capsys, monkeypatch, tmp_path):
    config, mm, native = trained
    code, stderr = run_cli(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={native}",
            f"--evaluation.ensemble=[{mm}]",
            f"--predictions.path={tmp_path / 'p.csv'}",
        ],
        capsys,
        monkeypatch,
    )
    line = last_error_line(stderr)
    assert code == 2 and f"checkpoint {mm} was trained on crops of 16x32x32 voxels at 1.25x0.7x0.7 mm" in line
    assert "evaluation.ensemble" in line and "data.spacing_mm" in line


def test_a_checkpoint_from_before_the_record_is_checked_with_its_runs_config(trained, capsys, monkeypatch):
    config, mm, _ = trained
    saved = torch.load(mm, weights_only=False)
    for key in ("input_spacings_mm", "input_intensity"):
        del saved["hyper_parameters"][key]
    older = mm.with_name("older.ckpt")  # still in the run's checkpoints/, beside its config.yaml
    torch.save(saved, older)
    code, stderr = run_cli(["validate", "--config", str(config), f"--ckpt_path={older}"], capsys, monkeypatch)
    assert code == 2 and "data.spacing_mm=[1.25, 0.7, 0.7], the data gives None" in last_error_line(stderr)
