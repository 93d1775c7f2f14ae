"""Measure the default job as a new user runs it, and write the figures into docs/benchmarks.md.

    python scripts/measure_default_job.py [--page docs/benchmarks.md] [--workdir DIR]

Runs ``python -m luna.fit`` with no arguments in an empty folder (the phantom is generated and the
crop cache built, as on a first run), times it, reads the run's ``metrics.csv``, validates the
last checkpoint again with ``--evaluation.prior_correction=true``, predicts its validation scans and
scores them with ``luna.evaluate`` as the README's walk-through does (the CPM's 95 % interval), and
replaces the block between
``<!-- default-job:begin -->`` and ``<!-- default-job:end -->`` in docs/benchmarks.md with the date, the
machine, the command and the numbers. The page's figures then come from a run, never from memory.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- default-job:begin -->", "<!-- default-job:end -->"


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    return f"{cores} CPU cores ({cpu}), {memory:.0f} GB RAM, {gpu}; {versions}"


def luna(args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "luna.fit", *args], cwd=cwd, capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return result.stdout + result.stderr


def validate(work: Path, run: Path, extra: list[str]) -> dict[str, float]:
    """The validation metrics of the run's last checkpoint, from the metrics.csv that ``validate``
    writes into the run (``<run>/validate/version_N``)."""
    before = set((run / "validate").glob("version_*"))
    luna(["validate", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *extra], work)
    (folder,) = set((run / "validate").glob("version_*")) - before
    row = [row for row in csv.DictReader((folder / "metrics.csv").open()) if row.get("val/f1")][-1]
    return {name: float(v) for name, v in row.items() if name.startswith("val/") and v}


def validation_froc(work: Path, run: Path) -> dict:
    """The README's walk-through: ``predict`` with the run's last checkpoint (the validation scans,
    into ``<run>/predictions.csv``), then ``luna.evaluate`` on that file alone; its froc.json."""
    luna(["predict", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], work)
    subprocess.run(
        [sys.executable, "-m", "luna.evaluate", str(run / "predictions.csv")],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads((run / "froc.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="luna-default-job-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    luna([], work)  # output to a pipe: no progress bar
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    run = work / "logs" / "version_0"
    rows = [row for row in csv.DictReader((run / "metrics.csv").open()) if row.get("val/f1")]

    def value(row: dict, name: str) -> float:
        return float(row[f"val/{name}"])

    last, best = rows[-1], max(rows, key=lambda row: value(row, "cpm"))
    plain, corrected = (validate(work, run, extra) for extra in ([], ["--evaluation.prior_correction=true"]))
    froc = validation_froc(work, run)
    low, high = froc["cpm_ci"]

    def line(row: dict) -> str:
        return (
            f"CPM {value(row, 'cpm'):.3f}, F1 {value(row, 'f1'):.3f} at P ≥ 0.5 (best-threshold F1 "
            f"{value(row, 'f1_best'):.3f} at {value(row, 'f1_best_threshold'):.2f}, optimistic), AUROC "
            f"{value(row, 'auroc'):.3f}, ECE {value(row, 'calibration_error'):.3f}"
        )

    block = "\n".join(
        [
            BEGIN,
            f"Measured {datetime.date.today()} on {machine()} with `python -m luna.fit` (no arguments, from "
            "an empty "
            "folder: phantom generated, crop cache built; `scripts/measure_default_job.py` ran it and "
            "wrote this).",
            "",
            f"- Wall clock: {minutes} min {seconds} s for 10 epochs of 1,024 balanced samples; validation: "
            f"{int(value(last, 'samples'))} candidates of {froc['scans']} scans, {froc['nodules']} nodules.",
            f"- After the last epoch: {line(last)}.",
            "- The last checkpoint's validation predictions scored by `luna.evaluate` (the walk-through "
            "above: "
            f"`predict`, then `luna.evaluate logs/version_0/predictions.csv`): CPM {froc['cpm']:.3f}, 95 % "
            "CI "
            f"{low:.3f}–{high:.3f} (1,000 bootstrap resamples of the scans); sensitivity "
            f"{' / '.join(f'{v:.3f}' for v in froc['sensitivity'])} at 1/8 … 8 FP/scan.",
            f"- Best epoch by CPM (epoch {int(best['epoch'])}, kept as `best-*.ckpt`): {line(best)}.",
            f"- Prior correction of the last checkpoint (`validate --evaluation.prior_correction=true`): ECE "
            f"{plain['val/calibration_error']:.3f} → {corrected['val/calibration_error']:.3f}, F1 at 0.5 "
            f"{plain['val/f1']:.3f} → {corrected['val/f1']:.3f}, precision {plain['val/precision']:.3f} → "
            f"{corrected['val/precision']:.3f}, recall {plain['val/recall']:.3f} → "
            f"{corrected['val/recall']:.3f}; "
            f"AUROC and CPM unchanged ({corrected['val/auroc']:.3f}, {corrected['val/cpm']:.3f}): the "
            "ranking is the same.",
            END,
        ]
    )
    page = args.page.read_text()
    if BEGIN not in page or END not in page:
        raise SystemExit(f"{args.page} has no {BEGIN} ... {END} block to replace")
    args.page.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, page, flags=re.S))
    print(block)


if __name__ == "__main__":
    main()
