"""The main job exactly as a new user runs it: `python -m luna.fit`, no arguments (slow: ~5 min on 2 cores)."""

import csv
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_default_job_generates_data_trains_and_learns(tmp_path):
    # Run from an empty folder: the phantom data, the cache and the logs all land under it.
    result = subprocess.run([sys.executable, "-m", "luna.fit", "--trainer.enable_progress_bar=false"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "data_cache" / "phantom-v2" / "candidates.csv").is_file()
    run = tmp_path / "logs" / "luna" / "version_0"
    f1 = [float(row["val/f1"]) for row in csv.DictReader((run / "metrics.csv").open()) if row.get("val/f1")]
    assert len(f1) == 10
    assert max(f1) >= 0.8 and f1[-1] >= 0.7  # measured on 2 CPU cores: best 0.88, last 0.81
    assert list((run / "checkpoints").glob("best-*.ckpt")) and (run / "checkpoints" / "last.ckpt").is_file()
