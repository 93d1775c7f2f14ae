"""An exported bundle against ``luna.fit predict`` on the same points, side by side in one run.

    python scripts/bench_infer.py CHECKPOINT [--config CONFIG ...] [--run_from DIR] [--repeats 3]

``CHECKPOINT`` is a trained classifier (the default job's ``logs/version_0/checkpoints/best-*.ckpt``),
``--config`` the files it was trained with (none: the default job), ``--run_from`` the folder the
run was started in (its relative paths, e.g. the default job's ``data_cache/``). The script

1. runs ``python -m luna.fit predict`` on the checkpoint (its evaluation split, crops read from the
   crop cache, which is built beforehand so that neither side pays for it);
2. exports the checkpoint once (``python -m luna.export``) and writes the predicted rows as a points
   CSV (``image`` = the scan's ``.mhd``);
3. runs ``python -m luna.infer BUNDLE --points`` on those points;

alternating 2 and 3 ``--repeats`` times, and prints each command's whole wall time (process start to
exit, imports included), their ratio, the largest difference of the probabilities, and the
bundle's start-up (``luna.infer.load``) and per-point latency measured in this process.
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
    scans = {path.stem: path for path in data_dir.glob("subset*/*.mhd")}
    rows = rows_of(predictions)
    points = work / "points.csv"
    with points.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "coordX", "coordY", "coordZ"])
        for row in rows:
            writer.writerow([scans[row["seriesuid"]], row["coordX"], row["coordY"], row["coordZ"]])
    bundle = work / "bundle"
    export_seconds = timed("luna.export", f"--ckpt_path={args.checkpoint.resolve()}", f"--output={bundle}")
    inferred = work / "infer.csv"
    seconds: dict[str, list[float]] = {"predict": [], "infer": []}
    for _ in range(args.repeats):
        seconds["predict"].append(timed(*predict, cwd=args.run_from))
        seconds["infer"].append(
            timed("luna.infer", str(bundle), "--points", str(points), "--output", str(inferred))
        )
    difference = max(
        abs(float(a["probability"]) - float(b["probability"]))
        for a, b in zip(rows_of(predictions), rows_of(inferred), strict=True)
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
        classifier(Volume.read(scans[uid], window=None), np.array(centers))
    per_point = (time.perf_counter() - start) / len(rows)
    predict_s, infer_s = statistics.median(seconds["predict"]), statistics.median(seconds["infer"])
    print(f"{len(rows)} points of {len(by_scan)} scans; median of {args.repeats} runs each, alternated")
    print("| | seconds |")
    print("| --- | --- |")
    for name, command in (("predict", "`luna.fit predict`"), ("infer", "`luna.infer --points`")):
        runs = ", ".join(f"{value:.2f}" for value in seconds[name])
        print(f"| {command}, whole command | {statistics.median(seconds[name]):.2f} ({runs}) |")
    print(f"| infer / predict | {infer_s / predict_s:.2f} |")
    print(f"| `luna.export`, once | {export_seconds:.2f} |")
    print(f"| bundle start-up in Python (torch imported by then) | {startup:.3f} |")
    print(f"| bundle per point (reading the scan, cutting, the network) | {per_point * 1000:.1f} ms |")
    print(f"largest |P(infer) - P(predict)|: {difference:.2e}")


if __name__ == "__main__":
    main()
