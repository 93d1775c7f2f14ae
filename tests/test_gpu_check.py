"""``scripts/gpu_check.sh``: the GPU check runs end to end as a dry run on the CPU and prints its table."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # eight short trainings as subprocesses, two of them DDP: about two minutes on 2 cores
def test_the_gpu_check_dry_run_prints_one_row_per_measurement(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "table.md"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("GPU check, ") and "CPU (dry run)" in lines[0]
    rows = [
        line for line in lines if line.startswith("| ") and not line.startswith(("| measurement", "| ---"))
    ]
    assert [row.split(" | ")[0][2:] for row in rows] == list(gpu_check.ROWS)
    for row in rows:
        value = row.split(" | ")[1]
        assert re.fullmatch(r"[\d.]+ (samples/s|s)", value) or value == "not measured", row
    assert out.read_text() in result.stdout
