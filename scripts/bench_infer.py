"""An exported bundle against ``luna.fit predict`` on the same points, side by side in one run.

    python scripts/bench_infer.py CHECKPOINT [--config CONFIG ...] [--run_from DIR] [--repeats 3]

``CHECKPOINT`` is a trained classifier (the default job's ``logs/version_0/checkpoints/best-*.ckpt``),
``--config`` the files it was trained with (none: the default job), ``--run_from`` the folder the
run was started in (its relative paths, e.g. the default job's ``data_cache/``). The script
exports the checkpoint once (``python -m luna.export``), then for the first K evaluation scans
(``--scans``) runs ``python -m luna.fit predict`` on them (crops from the crop cache, built
beforehand so that neither side pays for it) and ``python -m luna.infer BUNDLE --points`` on the
same points (``image`` = the scan's ``.mhd``), alternated ``--repeats`` times, and prints each
command's whole wall time (process start to exit, imports included), their ratio and the largest
difference of the probabilities; then the bundle's start-up and per-point latency in this process.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timed(*arguments: str, cwd: Path = ROOT) -> float:
    """Seconds of ``python -m ARGUMENTS`` in ``cwd``, from process start to exit; raises on failure."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *arguments], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--config", action="append", default=[], help="the run's config files")
    parser.add_argument("--run_from", type=Path, default=ROOT, help="the folder the run was started in")
    parser.add_argument("--scans", type=int, nargs="+", default=[8, 24], help="first K evaluation scans")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configs = [item for path in args.config for item in ("--config", path)]
    work = Path(tempfile.mkdtemp(prefix="bench_infer-"))
    predictions = work / "predictions.csv"
    predict = ["luna.fit", "predict", *configs, f"--ckpt_path={args.checkpoint.resolve()}"]
    predict += [f"--predictions.path={predictions}", "--trainer.enable_progress_bar=false"]
    timed(*predict, cwd=args.run_from)  # the crop cache is built (or found) here, outside the measurement
    record = json.loads(predictions.with_suffix(".json").read_text())
    data_dir = args.run_from / record["data_dir"]  # as given to the run: relative to where it ran
    files = {path.stem: path for path in data_dir.glob("subset*/*.mhd")}
    uids = sorted({row["seriesuid"] for row in rows_of(predictions)})
    bundle = work / "bundle"
    export_seconds = timed("luna.export", f"--ckpt_path={args.checkpoint.resolve()}", f"--output={bundle}")
    print(
        "| points (scans) | `luna.fit predict`, s | `luna.infer --points`, s | infer / predict | max abs dP |"
    )
    print("| --- | --- | --- | --- | --- |")
    for count in args.scans:
        chosen = uids[:count]
        scan_predict = [*predict, f"--data.eval_images={json.dumps(chosen)}"]
        timed(*scan_predict, cwd=args.run_from)
        rows = rows_of(predictions)
        points = work / f"points{count}.csv"
        with points.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "coordX", "coordY", "coordZ"])
            for row in rows:
                writer.writerow([files[row["seriesuid"]], row["coordX"], row["coordY"], row["coordZ"]])
        inferred = work / f"infer{count}.csv"
        seconds: dict[str, list[float]] = {"predict": [], "infer": []}
        for _ in range(args.repeats):
            seconds["predict"].append(timed(*scan_predict, cwd=args.run_from))
            seconds["infer"].append(
                timed("luna.infer", str(bundle), "--points", str(points), "--output", str(inferred))
            )
        difference = max(
            abs(float(a["probability"]) - float(b["probability"]))
            for a, b in zip(rows_of(predictions), rows_of(inferred), strict=True)
        )
        predict_s, infer_s = statistics.median(seconds["predict"]), statistics.median(seconds["infer"])
        runs = "; ".join(
            f"{name}: {', '.join(f'{value:.2f}' for value in values)}" for name, values in seconds.items()
        )
        print(
            f"| {len(rows)} ({len(chosen)}) | {predict_s:.2f} | {infer_s:.2f} | {infer_s / predict_s:.2f} "
            f"| {difference:.1e} |  <!-- {runs} -->"
        )
    start = time.perf_counter()
    from luna.data.volume import Volume
    from luna.infer import load

    classifier = load(bundle)
    startup = time.perf_counter() - start
    by_scan: dict[str, list[list[float]]] = {}
    for row in rows:
        by_scan.setdefault(row["seriesuid"], []).append(
            [float(row[c]) for c in ("coordX", "coordY", "coordZ")]
        )
    start = time.perf_counter()
    for uid, centers in by_scan.items():
        classifier(Volume.read(files[uid], window=None), np.array(centers))
    per_point = (time.perf_counter() - start) / len(rows)
    print(f"\nmedians of {args.repeats} runs each, alternated; whole commands, process start to exit")
    print(f"luna.export, once: {export_seconds:.2f} s")
    print(
        f"bundle start-up in Python (luna.infer and torch imported, checksums, TorchScript): {startup:.3f} s"
    )
    print(f"bundle per point (reading the scan, cutting, the network): {per_point * 1000:.1f} ms")


if __name__ == "__main__":
    main()
