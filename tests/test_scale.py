"""LUNA16's size in miniature: prediction over 50k candidates with few file descriptors, training
workers whose memory does not grow with the candidate count, mixed precision and compilation."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from luna.data.volume import Geometry, irc_to_xyz
from luna.luna16.datamodule import LunaDataModule
from luna.luna16.release import find_scans
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SMALL_WIDTH = [16, 16, 16]  # 8 KB crops: 50k of them fit a test's disk


def with_candidates(phantom_dir: Path, folder: Path, count: int, seed: int = 0) -> Path:
    """A copy of the phantom whose candidates.csv holds ``count`` rows inside the scans (1 in 50 positive)."""
    shutil.copytree(phantom_dir, folder, ignore=shutil.ignore_patterns("*.raw"))
    for raw in phantom_dir.glob("subset*/*.raw"):  # the voxels are shared, not copied
        (folder / raw.relative_to(phantom_dir)).symlink_to(raw)
    rng = np.random.default_rng(seed)
    scans = sorted(find_scans(phantom_dir).items())
    rows = ["seriesuid,coordX,coordY,coordZ,class\n"]
    for k in range(count):
        uid, path = scans[k % len(scans)]
        geometry = Geometry.read(path)
        irc = rng.uniform(0, np.array(geometry.shape_irc) - 1)
        x, y, z = irc_to_xyz(irc, geometry.origin_xyz, geometry.spacing_xyz, geometry.direction)
        rows.append(f"{uid},{x!r},{y!r},{z!r},{int(k % 50 == 0)}\n")
    (folder / "candidates.csv").write_text("".join(rows))
    return folder


class MeanLogits(torch.nn.Module):
    """A near-zero-cost network: two logits from the crop's mean."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)

    def forward(self, x):
        return self.linear(x.mean(dim=(1, 2, 3, 4))[:, None] / 1000)


@pytest.fixture(scope="module")
def large(phantom_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    return with_candidates(phantom_dir, root / "data", 50_000), root / "cache"


@pytest.mark.slow
def test_predict_over_50k_candidates_with_256_open_files_writes_every_row_once(large, tmp_path):
    data_dir, cache_dir = large
    config = tiny_config(
        tmp_path / "predict.yaml",
        data_dir,
        cache_dir,
        tmp_path / "runs",
        width_irc=SMALL_WIDTH,
        num_workers=2,
        batch_size=256,
        build_processes=2,
    )
    settings = yaml.safe_load(config.read_text())
    settings["model"] = {"network": {"class_path": "tests.test_scale.MeanLogits"}}
    config.write_text(yaml.safe_dump(settings))
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
        "from luna.fit import cli; sys.argv = ['luna'] + sys.argv[1:]; cli()"
    )
    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "predict",
            "--config",
            str(config),
            f"--predictions.path={out}",
            "--data.split_by=row",
            "--data.val_stride=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 25_000  # every other candidate: the validation half of split_by=row
    assert len({(r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"]) for r in rows}) == len(
        rows
    )  # each once


def worker_private_bytes(pid: int) -> int:
    """Memory only this worker holds: its dirty private pages (heap, copied pages). Clean pages of
    the memory-mapped cache are the page cache's, shared and reclaimable, and not counted."""
    fields = dict(line.split(":") for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Private_Dirty"].split()[0]) * 1024


def private_memory_after(data_dir: Path, cache_dir: Path, batches: int) -> int:
    datamodule = LunaDataModule(
        data_dir,
        cache_dir=cache_dir,
        width_irc=tuple(SMALL_WIDTH),
        batch_size=8,
        num_workers=1,
        negatives_per_positive=1,
        samples_per_epoch=8 * batches,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    # DataLoader's own iterator, under ResumableLoader's counting generator: it holds the worker.
    iterator = DataLoader.__iter__(datamodule.train_dataloader())
    for _ in range(batches):
        next(iterator)
    (worker,) = iterator._workers
    private = worker_private_bytes(worker.pid)
    iterator._shutdown_workers()
    return private


@pytest.mark.slow
def test_training_worker_memory_does_not_grow_with_the_candidate_count(phantom_dir, large, tmp_path, capsys):
    small = with_candidates(phantom_dir, tmp_path / "small", 5_000)
    few = private_memory_after(small, tmp_path / "cache", 3000)
    many = private_memory_after(*large, 3000)
    with capsys.disabled():
        print(
            f"\nworker private memory after 3,000 batches: {few / 2**20:.1f} MiB with 5k candidates, "
            f"{many / 2**20:.1f} MiB with 50k: ratio {many / few:.2f}"
        )
    assert many < 1.3 * few + 2**20


def test_bf16_mixed_precision_trains_and_evaluates_on_the_cpu(phantom_dir, cache_root, tmp_path):
    from luna.cli.fit import main

    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    cli = main(["--config", str(config), "--trainer.precision=bf16-mixed"])
    metrics = cli.trainer.callback_metrics
    assert all(torch.isfinite(metrics[name]) for name in ("val/loss", "val/auroc", "val/cpm", "train/loss"))


@pytest.mark.slow
def test_a_compiled_network_trains_and_checkpoints_the_plain_weights(phantom_dir, cache_root, tmp_path):
    from luna.cli.fit import main

    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    cli = main(["--config", str(config), "--model.compile=true", "--trainer.limit_val_batches=2"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    state = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)[
        "state_dict"
    ]
    assert "network.head_linear.weight" in state and not any("_orig_mod" in key for key in state)
