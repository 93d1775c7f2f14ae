"""LUNA16's size: 888 scans and a 754,975-row candidate list (V2), with small phantom scans and a
small crop so that the cache fits a disk (the real release's figures are extrapolated at the end).

    python scripts/bench_scale.py [--rows 754975] [--scans 888] [--width 16 16 16] [--workdir DIR]

Prints: candidate load time; cache build time and the memory a build worker adds; DataModule setup
time; the private memory of a training worker after 1k and 10k batches, forked and spawned
(flat is the goal); predict time and peak main memory with a near-zero-cost network and the
open-file limit at 1024, over every candidate and over a tenth of the scans (flat is the goal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from luna.data.volume import Geometry, irc_to_xyz
from luna.luna16.candidates import load_candidate_arrays
from luna.luna16.phantom import PhantomSpec, generate_phantom
from luna.luna16.release import find_scans

ROOT = Path(__file__).resolve().parents[1]


def write_v2_candidates(data_dir: Path, rows: int, positives: int = 1_557, nodules: int = 1_186) -> None:
    """Replace the phantom's CSVs with a V2-sized list of points inside its scans."""
    rng = np.random.default_rng(0)
    scans = sorted(find_scans(data_dir).items())
    geometries = [Geometry.read(path) for _, path in scans]
    scan_of = rng.integers(0, len(scans), rows)
    label = np.zeros(rows, dtype=int)
    label[rng.choice(rows, positives, replace=False)] = 1
    lines = ["seriesuid,coordX,coordY,coordZ,class\n"]
    centers = []
    for s, cls in zip(scan_of.tolist(), label.tolist(), strict=False):
        g = geometries[s]
        centers.append(
            irc_to_xyz(rng.uniform(0, np.array(g.shape_irc) - 1), g.origin_xyz, g.spacing_xyz, g.direction)
        )
        x, y, z = centers[-1]
        lines.append(f"{scans[s][0]},{x!r},{y!r},{z!r},{cls}\n")
    (data_dir / "candidates.csv").write_text("".join(lines))
    picks = rng.choice(np.flatnonzero(label), nodules, replace=False)
    annotations = ["seriesuid,coordX,coordY,coordZ,diameter_mm\n"] + [
        f"{scans[scan_of[k]][0]},{centers[k][0]!r},{centers[k][1]!r},{centers[k][2]!r},"
        f"{float(rng.uniform(3.25, 32.3))!r}\n"
        for k in picks.tolist()
    ]
    (data_dir / "annotations.csv").write_text("".join(annotations))
    (data_dir / "v2-candidates.done").touch()


def run_python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return result.stdout


BUILD = """
import os, resource, sys, time
from luna.data.cache import build as cache_build
from luna.data.crops import View
from luna.luna16.sources import Luna16Candidates

def resident():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

cut, added = cache_build._cut_image, sys.argv[4]
def measured(*job):
    start = resident()
    cut(*job)
    with open(added, "a") as out:
        out.write(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start}\\n")
cache_build._cut_image = measured
width = tuple(int(w) for w in sys.argv[3].split(","))
start = time.perf_counter()
settings = cache_build.CacheSettings((View(width),), (-1000.0, 1000.0))
cache_build.build_cache(Luna16Candidates(sys.argv[1]), sys.argv[2], settings, 2)
print(time.perf_counter() - start)
"""

WORKERS = """
import sys, time
from pathlib import Path
from luna.luna16.datamodule import LunaDataModule

def private_dirty(pid):
    fields = dict(line.split(":") for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Private_Dirty"].split()[0]) * 1024

width, method = tuple(int(w) for w in sys.argv[3].split(",")), sys.argv[4]
start = time.perf_counter()
datamodule = LunaDataModule(sys.argv[1], cache_dir=sys.argv[2], width_irc=width, batch_size=32, num_workers=1,
                            negatives_per_positive=0, samples_per_epoch=32 * 10_000)
datamodule.setup("fit")
setup = time.perf_counter() - start
loader = datamodule.train_dataloader()
loader.multiprocessing_context = method
iterator = iter(loader)
(worker,) = iterator._workers
sizes = {}
for batch in range(1, 10_001):
    next(iterator)
    if batch in (1, 1_000, 10_000):
        sizes[batch] = private_dirty(worker.pid)
print(setup, sizes[1], sizes[1_000], sizes[10_000])
"""

PREDICT = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from luna.cli.fit import main
start = time.perf_counter()
main(sys.argv[1:])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def predict(
    work: Path, data: Path, cache: Path, width: str, eval_images: list[str] | str
) -> tuple[int, float, int]:
    """``luna.fit predict`` of a near-zero-cost network: rows written, seconds, peak main memory (bytes)."""
    out = work / "predictions.csv"
    config = work / "predict.yaml"
    config.write_text(
        textwrap.dedent(f"""
        data:
          data_dir: {data}
          cache_dir: {cache}
          width_irc: [{width}]
          eval_images: {json.dumps(eval_images)}
          batch_size: 512
          num_workers: 2
        model:
          network:
            class_path: tests.test_scale.MeanLogits
        trainer:
          default_root_dir: {work / "runs"}
          enable_progress_bar: false
        loggers: [csv]
    """)
    )
    seconds, peak = run_python(
        PREDICT, "predict", "--config", str(config), f"--predictions.path={out}"
    ).split()[-2:]
    with out.open() as handle:
        rows = sum(1 for _ in handle) - 1
    return rows, float(seconds), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=754_975)
    parser.add_argument("--scans", type=int, default=888)
    parser.add_argument("--width", type=int, nargs=3, default=(16, 16, 16))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="luna-scale-"))
    width = ",".join(map(str, args.width))
    print(f"work folder: {work}")
    data = work / "luna16"
    if not (data / "v2-candidates.done").is_file():
        shutil.rmtree(data, ignore_errors=True)
        start = time.perf_counter()
        generate_phantom(
            data, PhantomSpec(series=args.scans, seed=0, shape_irc=(48, 96, 96), missing_series=0)
        )
        write_v2_candidates(data, args.rows)
        print(
            f"[data] {args.scans} phantom scans and a {args.rows:,}-row candidate list written in "
            f"{time.perf_counter() - start:.0f} s"
        )
    start = time.perf_counter()
    candidates = load_candidate_arrays(data / "annotations.csv", data / "candidates.csv")
    print(
        f"[candidates] {len(candidates):,} rows loaded, joined and ordered in "
        f"{time.perf_counter() - start:.1f} s"
    )

    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    added = work / "worker-added.txt"
    added.unlink(missing_ok=True)
    build_seconds = float(run_python(BUILD, str(data), str(cache), width, str(added)).split()[-1])
    worker_peak = max(int(line) for line in added.read_text().split())
    (path,) = cache.glob("luna-*")
    crop_bytes = sum(p.stat().st_size for p in (path / "images").glob("*.npy"))
    print(
        f"[build] {args.scans} scans, {len(candidates):,} crops of {args.width}: {build_seconds:.0f} s with "
        "2 "
        f"processes ({build_seconds / args.scans:.2f} s a scan); a build worker adds at most "
        f"{worker_peak / 2**20:.0f} MiB; crops {crop_bytes / 2**30:.2f} GiB"
    )

    for method in ("fork", "spawn"):
        setup, first, thousand, ten_thousand = run_python(
            WORKERS, str(data), str(cache), width, method
        ).split()
        print(
            f"[workers, {method}] DataModule setup {float(setup):.2f} s; a training worker's private memory "
            "after 1 / 1,000 / "
            f"10,000 batches of 32: {int(first) / 2**20:.1f} / {int(thousand) / 2**20:.1f} / "
            f"{int(ten_thousand) / 2**20:.1f} MiB"
        )

    uids = sorted(find_scans(data))
    tenth = predict(work, data, cache, width, uids[: len(uids) // 10])
    everything = predict(work, data, cache, width, "all")
    for (rows, seconds, peak), name in ((tenth, "a tenth of the scans"), (everything, "every scan")):
        print(
            f"[predict] {name}: {rows:,} rows in {seconds:.0f} s with the open-file limit at 1024; peak main "
            f"memory {peak / 2**20:.0f} MiB"
        )
    print(
        f"[predict] peak main memory, every scan / a tenth: {everything[2] / tenth[2]:.2f} for "
        f"{everything[0] / tenth[0]:.1f}x the rows"
    )
    crop_voxels = 32 * 48 * 48
    print(
        f"[real size] LUNA16 V2 at 32x48x48: crops {len(candidates) * crop_voxels * 2 / 1e9:.0f} GB "
        f"(2 bytes a voxel)"
    )


if __name__ == "__main__":
    main()
