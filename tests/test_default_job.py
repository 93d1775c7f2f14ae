"""The main job exactly as a new user runs it: `python -m luna.fit`, no arguments (slow: ~6 min on
2 cores)."""

import csv
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_default_job_generates_data_trains_and_learns(tmp_path):
    # Run from an empty folder: the phantom data, the cache and the logs all land under it.
    result = subprocess.run(
        [sys.executable, "-m", "luna.fit", "--trainer.enable_progress_bar=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    phantoms = list((tmp_path / "data_cache").glob("phantom-*/candidates.csv"))
    assert len(phantoms) == 1, phantoms
    run = tmp_path / "logs" / "version_0"
    rows = [row for row in csv.DictReader((run / "metrics.csv").open()) if row.get("val/f1")]
    f1, cpm = [float(row["val/f1"]) for row in rows], [float(row["val/cpm"]) for row in rows]
    assert len(f1) == 10
    # measured on 2 CPU cores (2026-11-23): F1 at 0.5 best 0.914, last 0.897; CPM best 0.916, last 0.916
    assert max(f1) >= 0.8 and f1[-1] >= 0.75
    assert max(cpm) >= 0.8 and cpm[-1] >= 0.75
    assert list((run / "checkpoints").glob("best-*.ckpt")) and (run / "checkpoints" / "last.ckpt").is_file()
