"""Small builders shared by the training tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml


def tiny_config(path: Path, data_dir: Path, cache_dir: Path, run_dir: Path, **data) -> Path:
    """A config for `luna.fit` that trains a few steps on the test phantom."""
    config = {
        "data": {
            "data_dir": str(data_dir),
            "cache_dir": str(cache_dir),
            "phantom": None,
            "batch_size": 8,
            "num_workers": 0,
            "negatives_per_positive": 1,
            "samples_per_epoch": 16,
            **data,
        },
        "trainer": {
            "max_epochs": 1,
            "default_root_dir": str(run_dir),
            "enable_progress_bar": False,
        },
        "loggers": ["csv"],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def points_config(path: Path, points_csv: Path, cache_dir: Path, run_dir: Path, **data) -> Path:
    """A config for `luna.fit` that trains a few steps on a points CSV (three classes)."""
    config = {
        "data": {
            "class_path": "luna.points.datamodule.PointsDataModule",
            "init_args": {
                "points_csv": str(points_csv),
                "cache_dir": str(cache_dir),
                "width_irc": [16, 32, 32],
                "val_stride": 3,
                "batch_size": 8,
                "num_workers": 0,
                "negatives_per_positive": 1,
                "samples_per_epoch": 24,
                **data,
            },
        },
        "checkpoint": {"monitor": "val/f1", "mode": "max"},
        "trainer": {"max_epochs": 1, "default_root_dir": str(run_dir), "enable_progress_bar": False},
        "loggers": ["csv"],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args: list[str], capsys, monkeypatch, command=None) -> tuple[int, str]:
    """``python -m luna.fit ARGS`` (or another command's ``cli``) in this process: its exit status
    and its stderr."""
    if command is None:
        from luna.cli.fit import cli as command

    monkeypatch.setattr(sys, "argv", ["luna", *args])
    with pytest.raises(SystemExit) as stopped:
        command()
    return stopped.value.code, capsys.readouterr().err


def last_error_line(stderr: str) -> str:
    return next(line for line in reversed(stderr.strip().splitlines()) if line.startswith("error:"))


def segment_config(path: Path, data_dir: Path, cache_dir: Path, run_dir: Path, **data) -> Path:
    config = {
        "model": {"class_path": "luna.segmentation.module.SegmentationModule", "init_args": {}},
        "data": {
            "class_path": "luna.luna16.segmentation.Luna16SegmentationDataModule",
            "init_args": {
                "data_dir": str(data_dir),
                "cache_dir": str(cache_dir),
                "phantom": None,
                "spacing_mm": [1.5, 1.5, 1.5],
                "patch_irc": [32, 32, 32],
                "batch_size": 2,
                "num_workers": 0,
                "samples_per_epoch": 8,
                "val_stride": 4,
                **data,
            },
        },
        "checkpoint": {"monitor": "val/nodule_recall", "mode": "max"},
        "trainer": {"max_epochs": 1, "default_root_dir": str(run_dir), "enable_progress_bar": False},
        "loggers": ["csv"],
    }
    path.write_text(yaml.safe_dump(config))
    return path
