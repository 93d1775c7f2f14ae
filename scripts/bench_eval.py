"""Evaluation benchmark: FROC/CPM of a LUNA16 V2-sized submission, with and without the bootstrap.

    python scripts/bench_eval.py [--rows 754975] [--scans 888] [--bootstrap 1000]

Writes a synthetic release-sized evaluation (888 scans, 1,186 nodules, 35,192 irrelevant findings,
a 754,975-row predictions CSV from a noisy classifier whose marks cluster around the findings) and
times ``luna.luna16.scoring.evaluate_submission`` on it: reading the files, the 100-mark cap,
the matching, the curve and CPM, then the same with the bootstrap.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from luna.luna16.scoring import evaluate_submission


def write_release(folder: Path, rows: int, scans: int, nodules: int = 1186, irrelevant: int = 35_192) -> Path:
    rng = np.random.default_rng(0)
    uids = [f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{rng.integers(10**17, 10**18)}{k:012d}" for k in range(scans)]
    (folder / "seriesuids.csv").write_text("".join(f"{uid}\n" for uid in uids))
    findings = {}
    for name, count, diameters in (
        ("annotations.csv", nodules, lambda n: rng.uniform(3.25, 32.3, n)),
        (
            "annotations_excluded.csv",
            irrelevant,
            lambda n: np.where(rng.random(n) < 0.8, -1.0, rng.uniform(1, 10, n)),
        ),
    ):
        scan = rng.integers(0, scans, count)
        xyz = rng.uniform(-150, 150, (count, 3))
        findings[name] = (scan, xyz)
        with (folder / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
            writer.writerows(
                [uids[s], *map(repr, p), repr(d)]
                for s, p, d in zip(scan, xyz.tolist(), diameters(count).tolist(), strict=False)
            )
    # marks: one near each nodule (a detection), a tenth of the rest near irrelevant findings, the
    # rest anywhere
    nodule_scan, nodule_xyz = findings["annotations.csv"]
    other_scan, other_xyz = findings["annotations_excluded.csv"]
    near_other = rows // 10
    scan = np.concatenate(
        [
            nodule_scan,
            other_scan[rng.integers(0, irrelevant, near_other)],
            rng.integers(0, scans, rows - nodules - near_other),
        ]
    )
    xyz = np.concatenate(
        [
            nodule_xyz + rng.normal(0, 1, (nodules, 3)),
            other_xyz[rng.integers(0, irrelevant, near_other)] + rng.normal(0, 2, (near_other, 3)),
            rng.uniform(-150, 150, (rows - nodules - near_other, 3)),
        ]
    )
    label = np.r_[np.ones(nodules), np.zeros(rows - nodules)]
    probability = 1 / (1 + np.exp(-(6 * label - 4 + rng.normal(0, 1.5, rows))))
    order = rng.permutation(rows)
    predictions = folder / "predictions.csv"
    with predictions.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability"])
        writer.writerows(
            [uids[scan[k]], *map(repr, xyz[k].tolist()), repr(float(probability[k]))] for k in order
        )
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=754_975)
    parser.add_argument("--scans", type=int, default=888)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        predictions = write_release(folder, args.rows, args.scans)
        size = predictions.stat().st_size / 2**20
        for samples in (0, args.bootstrap):
            start = time.perf_counter()
            evaluation = evaluate_submission(predictions, folder, bootstrap_samples=samples, seed=0)
            seconds = time.perf_counter() - start
            result = evaluation.result
            interval = (
                f", 95 % CI {result.bootstrap.cpm_ci[0]:.3f}-{result.bootstrap.cpm_ci[1]:.3f}"
                if samples
                else ""
            )
            print(
                f"{args.rows:,} rows ({size:.0f} MiB) over {args.scans} scans, {samples} bootstrap "
                "resamples: "
                f"{seconds:.1f} s (CPM {result.cpm:.3f}{interval}; {result.counts.capped_marks:,} marks "
                "over the cap, "
                f"{result.counts.false_positives:,} false positives, {result.counts.irrelevant_marks:,} on "
                "irrelevant findings)"
            )


if __name__ == "__main__":
    main()
