"""From a CT to its nodules, measured: the segmentation alone, the whole detection, and what it costs.

    python scripts/bench_detection.py [--seeds 0 1 2] [--series 240] [--heldout 24] [--geometry luna16]

On a phantom release (``--geometry luna16``: LUNA16's spacings and nodule sizes), each seed trains
both stages with their shipped configurations and default budgets (``configs/luna16_segment.yaml``
and ``configs/default.yaml``, given only the data folder and the seed), then, on the scans of a
held-out phantom (another seed, never trained on):

* the segmentation alone: its candidates (``luna.fit predict`` of the segmentation) scored by
  ``luna.evaluate``: nodules hit, candidates per scan, and their FROC by segmentation probability;
* the detection track: ``luna.detect`` (segmentation, then the classifier) scored by ``luna.evaluate``;
* the candidate track: the same classifier on the held-out release's ``candidates.csv``;
* ``luna.detect``'s seconds per scan on this machine;
* the volume store's bytes beside the crop cache's for the same scans, per scan and for 888.

Each CPM comes with its 95 % interval (1,000 bootstrap resamples of the held-out scans, the same
for every run); the table gives the mean and sd over seeds and each seed's value. Results are kept
in ``--workdir``: a rerun reuses what is there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANS_IN_LUNA16 = 888


def run(*arguments: str) -> str:
    """A luna command, its output (stderr: luna logs there)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *arguments], cwd=ROOT, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(arguments[:3])} failed:\n{result.stderr[-4000:]}")
    print(f"  {' '.join(arguments[:2])}: {time.perf_counter() - start:.0f} s", flush=True)
    return result.stdout + result.stderr


def last_checkpoint(root: Path) -> Path:
    return max(root.glob("version_*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)


def froc(predictions: Path, data_dir: Path) -> dict:
    run(
        "luna.evaluate",
        str(predictions),
        "--data_dir",
        str(data_dir),
        "--output",
        str(predictions.parent),
        "--bootstrap",
        "1000",
        "--seed",
        "0",
    )
    return json.loads((predictions.parent / "froc.json").read_text())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def one_seed(seed: int, train: Path, heldout: Path, work: Path) -> dict:
    """Both stages trained with ``seed``, measured on the held-out scans (kept in ``work/seed<N>.json``)."""
    result_file = work / f"seed{seed}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder = work / f"seed{seed}"
    cache = work / "cache"
    common = [
        f"--data.data_dir={train}",
        f"--data.cache_dir={cache}",
        f"--seed_everything={seed}",
        f"--data.seed={seed}",
        "--trainer.enable_progress_bar=false",
    ]
    print(f"seed {seed}: segmentation", flush=True)
    run(
        "luna.fit",
        "--config",
        "configs/luna16_segment.yaml",
        *common,
        f"--trainer.default_root_dir={folder / 'seg'}",
    )
    print(f"seed {seed}: classifier", flush=True)
    run("luna.fit", *common, f"--trainer.default_root_dir={folder / 'cls'}")
    segmentation, classifier = last_checkpoint(folder / "seg"), last_checkpoint(folder / "cls")
    held = [f"--data.data_dir={heldout}", f"--data.cache_dir={cache}", "--data.eval_images=all"]
    candidates = folder / "segmentation" / "predictions.csv"
    run(
        "luna.fit",
        "predict",
        "--config",
        "configs/luna16_segment.yaml",
        *held,
        f"--ckpt_path={segmentation}",
        f"--predictions.path={candidates}",
    )
    track = folder / "candidates" / "predictions.csv"
    run("luna.fit", "predict", *held, f"--ckpt_path={classifier}", f"--predictions.path={track}")
    run(
        "luna.detect",
        "--data_dir",
        str(heldout),
        "--segmentation",
        str(segmentation),
        "--classifier",
        str(classifier),
        "--output",
        str(folder / "detection"),
    )
    detections = folder / "detection" / "detections.csv"
    record = json.loads(detections.with_suffix(".json").read_text())
    alone, detection, candidate = froc(candidates, heldout), froc(detections, heldout), froc(track, heldout)
    result = {
        "seed": seed,
        "segmentation_recall": alone["detected"] / alone["nodules"],
        "segmentation_candidates_per_scan": json.loads(candidates.with_suffix(".json").read_text())["rows"]
        / alone["scans"],
        "segmentation_cpm": [alone["cpm"], *alone["cpm_ci"]],
        "detection_cpm": [detection["cpm"], *detection["cpm_ci"]],
        "detection_sensitivity": detection["sensitivity"],
        "candidate_cpm": [candidate["cpm"], *candidate["cpm_ci"]],
        "detect_seconds_per_scan": statistics.median(record["seconds_per_scan"]),
        "nodules": detection["nodules"],
        "scans": detection["scans"],
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def stores(work: Path, train: Path) -> tuple[float, float, int]:
    """Bytes a scan of the training release takes in the volume store and in the crop cache."""

    def of_training(
        pattern: str,
    ) -> Path:  # the cache whose manifest lists the most images: the training release
        built = [path for path in (work / "cache").glob(pattern) if (path / "manifest.json").is_file()]
        return max(built, key=lambda path: len(json.loads((path / "manifest.json").read_text())["images"]))

    scans = len(list(train.glob("subset*/*.mhd")))
    return folder_bytes(of_training("volumes-*")) / scans, folder_bytes(of_training("luna-*")) / scans, scans


def mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--series", type=int, default=240, help="scans of the training release")
    parser.add_argument("--heldout", type=int, default=24, help="scans of the held-out release")
    parser.add_argument("--geometry", choices=("simple", "luna16"), default="luna16")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "luna-bench-detection")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    train, heldout = work / "train", work / "heldout"
    for folder, series, seed in ((train, args.series, 0), (heldout, args.heldout, 1000)):
        if not folder.is_dir():
            run(
                "luna.phantom",
                "luna16",
                str(folder),
                "--series",
                str(series),
                "--seed",
                str(seed),
                "--geometry",
                args.geometry,
            )
    results = [one_seed(seed, train, heldout, work) for seed in args.seeds]
    volume, crop, scans = stores(work, train)
    rows = [
        ("segmentation alone: nodules hit", [r["segmentation_recall"] for r in results], ""),
        (
            "segmentation alone: candidates per scan",
            [r["segmentation_candidates_per_scan"] for r in results],
            "",
        ),
        (
            "segmentation alone: CPM (by its own probability)",
            [r["segmentation_cpm"][0] for r in results],
            [r["segmentation_cpm"] for r in results],
        ),
        (
            "detection track: segmentation, then the classifier (CPM)",
            [r["detection_cpm"][0] for r in results],
            [r["detection_cpm"] for r in results],
        ),
        ("detection track: sensitivity at 8 FP/scan", [r["detection_sensitivity"][-1] for r in results], ""),
        (
            "candidate track: the same classifier on candidates.csv (CPM)",
            [r["candidate_cpm"][0] for r in results],
            [r["candidate_cpm"] for r in results],
        ),
        ("luna.detect: seconds per scan (CPU, median)", [r["detect_seconds_per_scan"] for r in results], ""),
    ]
    print(
        f"\n{args.geometry}-geometry phantom: {args.series} training scans, {results[0]['scans']} held-out "
        "scans "
        f"({results[0]['nodules']} nodules); seeds {args.seeds}; default budgets of both configs\n"
    )
    print("| measure | mean ± sd over seeds | per seed (95 % CI) |")
    print("| --- | --- | --- |")
    for name, values, intervals in rows:
        per_seed = (
            ", ".join(f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})" for v in intervals)
            if intervals
            else ", ".join(f"{v:.3f}" for v in values)
        )
        print(f"| {name} | {mean_sd(values)} | {per_seed} |")
    print(
        f"\nPer scan of the training release ({scans} scans): volume store {volume / 1e6:.1f} MB (image + "
        "mask at the "
        f"stored spacing), crop cache {crop / 1e6:.1f} MB; for LUNA16's {SCANS_IN_LUNA16} scans at this "
        "geometry: "
        f"{volume * SCANS_IN_LUNA16 / 1e9:.1f} GB and {crop * SCANS_IN_LUNA16 / 1e9:.1f} GB."
    )


if __name__ == "__main__":
    main()
