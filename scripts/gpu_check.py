"""One GPU check in one call: the figures a GPU machine gives luna, measured side by side, as one table.

    bash scripts/gpu_check.sh [--out docs/gpu_check.md]      # on a GPU machine: under 8 minutes
    bash scripts/gpu_check.sh --dry-run                      # on a CPU: tiny sizes, the same table

Measured (each with the real code path):

* the default job's training throughput (``python -m luna.fit``, its phantom and configuration,
  a fixed number of steps) in fp32, in bf16-mixed and with ``torch.compile``: samples/s between two
  step counts, so start-up, data, compilation and the first steps cancel out;
* the training loader alone (8 workers, the default job's batches) against the model alone (its
  training step on one batch held on the device): which one limits training;
* ``luna.evaluate``'s scoring of a LUNA16 V2-sized submission (754,975 rows, 888 scans), without and
  with the 1,000-sample bootstrap;
* DDP on every visible GPU (``--trainer.strategy=ddp --trainer.devices=-1``): global samples/s and
  its scaling against one GPU.

The dry run measures the same rows on the CPU with a 12-scan phantom, a few steps, two gloo
processes for DDP and a small submission; ``torch.compile`` is not run there (minutes of C++
compilation on a CPU), and its row says so. Its figures mean nothing; its table's shape is what
``tests/test_gpu_check.py`` checks.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "default job, fp32",
    "default job, bf16-mixed",
    "default job, torch.compile (fp32)",
    "training loader alone",
    "model alone (fp32)",
    "luna.evaluate, V2-sized, no bootstrap",
    "luna.evaluate, V2-sized, 1,000 bootstraps",
    "default job, DDP on every device",
)
STEPS_IN = re.compile(
    r"training finished \([^)]*\): \d+ epochs, (\d+) steps in (?:(\d+) min (\d+) s|([\d.]+) s)"
)


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does: the real check, or the dry run's token amounts."""

    series: int
    shape_irc: tuple[int, int, int]
    steps: tuple[int, int]  # two step counts; throughput is measured between them
    loader_batches: int
    workers: int
    rows: int
    scans: int
    ddp: list[str]


CHECK = Sizes(
    series=240,
    shape_irc=(64, 128, 128),
    steps=(30, 230),
    loader_batches=200,
    workers=8,
    rows=754_975,
    scans=888,
    ddp=["--trainer.accelerator=gpu", "--trainer.strategy=ddp", "--trainer.devices=-1"],
)
DRY_RUN = Sizes(
    series=12,
    shape_irc=(64, 128, 128),
    steps=(2, 6),
    loader_batches=4,
    workers=2,
    rows=20_000,
    scans=50,
    ddp=["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"],
)


def fit_seconds(workdir: Path, sizes: Sizes, name: str, steps: int, extra: list[str]) -> float:
    """Seconds of training (RunLog's summary) of the default job stopped at ``steps``."""
    command = [
        sys.executable,
        "-m",
        "luna.fit",
        f"--data.phantom.series={sizes.series}",
        f"--data.phantom.shape_irc={list(sizes.shape_irc)}",
        f"--data.cache_dir={workdir / 'data_cache'}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={workdir / 'runs' / name}",
        "--loggers=[csv]",
        f"--data.num_workers={sizes.workers}",
        *extra,
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    found = STEPS_IN.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    minutes, whole, decimal = found.group(2), found.group(3), found.group(4)
    return float(decimal) if decimal else 60 * int(minutes) + int(whole)


def fit_throughput(workdir: Path, sizes: Sizes, name: str, extra: list[str], processes: int = 1) -> float:
    """Samples/s of the default job between its two step counts (global over ``processes``)."""
    low, high = sizes.steps
    seconds = [fit_seconds(workdir, sizes, f"{name}-{steps}", steps, extra) for steps in (low, high)]
    return (high - low) * 32 * processes / max(seconds[1] - seconds[0], 1e-9)


def loader_and_model(workdir: Path, sizes: Sizes, device: torch.device) -> tuple[float, float]:
    """Samples/s of the default job's training loader alone, and of its model alone on the device."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_train import samples_per_second

    from luna.luna16.datamodule import LunaDataModule
    from luna.luna16.phantom import PhantomSpec
    from luna.training.module import LunaClassifier

    datamodule = LunaDataModule(
        None,
        phantom=PhantomSpec(series=sizes.series, seed=0, shape_irc=sizes.shape_irc),
        cache_dir=workdir / "data_cache",
        batch_size=32,
        num_workers=sizes.workers,
        negatives_per_positive=1,
        samples_per_epoch=32 * (sizes.loader_batches + 3),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = iter(datamodule.train_dataloader())
    for _ in range(3):  # the workers start
        next(batches)
    start = time.perf_counter()
    for _ in range(sizes.loader_batches):
        next(batches)
    loader = 32 * sizes.loader_batches / (time.perf_counter() - start)
    module = LunaClassifier(input_widths_irc=datamodule.input_widths_irc).to(device)
    module.log = lambda *a, **k: None  # no Trainer here: logging is not what is measured
    module.trainer = type("Stub", (), {"training": True, "estimated_stepping_batches": 1, "global_step": 0})()
    fixed = next(iter(datamodule.train_dataloader()))
    model = samples_per_second(
        module, iter(lambda: fixed, None), sizes.loader_batches, device, autocast=False
    )
    return loader, model


def evaluate_seconds(workdir: Path, sizes: Sizes) -> tuple[float, float]:
    """Seconds of ``evaluate_submission`` on a V2-sized release, without and with the bootstrap."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_eval import write_release

    from luna.luna16.scoring import evaluate_submission

    folder = workdir / "release"
    folder.mkdir(exist_ok=True)
    predictions = write_release(folder, sizes.rows, sizes.scans)
    evaluate_submission(
        predictions, folder, bootstrap_samples=0, seed=0
    )  # warm: files in the page cache, imports done
    times = []
    for samples in (0, 1000):
        start = time.perf_counter()
        evaluate_submission(predictions, folder, bootstrap_samples=samples, seed=0)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def table(rows: dict[str, tuple[str, str]], header: str) -> str:
    """The markdown table: one line per measurement of ``ROWS``, in that order."""
    lines = [header, "", "| measurement | value | compared |", "| --- | --- | --- |"]
    lines += [f"| {name} | {rows[name][0]} | {rows[name][1]} |" for name in ROWS]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="on the CPU, tiny sizes: checks the script, not a GPU"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="phantom, caches and runs (default: a temporary folder)"
    )
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error(
            "no GPU is visible: run on a GPU machine, or pass --dry-run to check the script on the CPU"
        )
    sizes = DRY_RUN if args.dry_run else CHECK
    device = torch.device("cpu" if args.dry_run else "cuda")
    devices = 2 if args.dry_run else torch.cuda.device_count()
    accelerator = (
        ["--trainer.accelerator=cpu"]
        if args.dry_run
        else ["--trainer.accelerator=gpu", "--trainer.devices=1"]
    )
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        started = time.monotonic()
        fp32 = fit_throughput(workdir, sizes, "fp32", accelerator)
        bf16 = fit_throughput(workdir, sizes, "bf16", [*accelerator, "--trainer.precision=bf16-mixed"])
        compiled = (
            None
            if args.dry_run
            else fit_throughput(workdir, sizes, "compile", [*accelerator, "--model.compile=true"])
        )
        loader, model = loader_and_model(workdir, sizes, device)
        plain, bootstrapped = evaluate_seconds(workdir, sizes)
        ddp = fit_throughput(workdir, sizes, "ddp", sizes.ddp, processes=devices)
        minutes = (time.monotonic() - started) / 60
    rows = {
        ROWS[0]: (f"{fp32:.0f} samples/s", "1.00x"),
        ROWS[1]: (f"{bf16:.0f} samples/s", f"{bf16 / fp32:.2f}x fp32"),
        ROWS[2]: (
            (f"{compiled:.0f} samples/s", f"{compiled / fp32:.2f}x fp32")
            if compiled is not None
            else ("not measured", "dry run: compiling on a CPU takes minutes")
        ),
        ROWS[3]: (
            f"{loader:.0f} samples/s",
            f"{sizes.workers} workers; {loader / model:.2f}x the model alone",
        ),
        ROWS[4]: (f"{model:.0f} samples/s", "one batch held on the device"),
        ROWS[5]: (f"{plain:.1f} s", f"{sizes.rows:,} rows, {sizes.scans} scans"),
        ROWS[6]: (f"{bootstrapped:.1f} s", f"{bootstrapped / plain:.1f}x without"),
        ROWS[7]: (
            f"{ddp:.0f} samples/s",
            f"{devices} processes; {ddp / fp32:.2f}x one ({ddp / fp32 / devices:.0%} scaling)",
        ),
    }
    name = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    header = (
        f"GPU check, {datetime.date.today().isoformat()}: {name}, {devices} device(s); torch "
        f"{torch.__version__}"
        f" (CUDA {torch.version.cuda}), Python {platform.python_version()}; batch 32, default job's phantom "
        f"({sizes.series} scans); {minutes:.1f} min (`bash scripts/gpu_check.sh"
        f"{' --dry-run' if args.dry_run else ''}`)"
    )
    text = table(rows, header)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
