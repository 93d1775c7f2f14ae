"""The crop cache: every candidate's crop cut once, stored as int16, served as zero-copy slices.

The book's pipeline pickles each float32 crop into a disk cache (~160 GB, hours to fill). Here a
build reads each scan once, cuts all of its crops and writes them to one ``.npy`` file per scan;
reads are slices of memory-mapped arrays (2 bytes a voxel, no decoding).

Layout of one cache (``<cache_dir>/luna-<key>/``)::

    scans/<seriesuid>.npy    int16 [n, I, R, C]: the scan's crops, in reference candidate order
    scans/<seriesuid>.json   centres in IRC (null when outside the scan) or the read error;
                             written after the .npy, so its presence marks the scan as done
    index.npy                one record per served candidate, in reference order
    manifest.json            inputs, series list and counts; written last: the cache is complete

The key hashes the CSVs' bytes, the scans on disk (uid, subset, ``.raw`` size and modification
time), the crop width, the HU window and ``FORMAT_VERSION``: a changed input gives a new cache, an
unchanged one is reused without opening a scan. Hashing 120 GB of voxels is not an option, so a
scan rewritten in place counts as changed (its mtime moves) and a copy that keeps mtimes
(``cp -p``, ``rsync -a``) reuses the cache. Every file is written under a temporary name and renamed, and a scan whose
``.json`` exists is never redone, so a build killed at any moment resumes and ends with the same
bytes as an uninterrupted one. Two builders racing on one folder write different temporary files
and rename identical contents, so neither corrupts the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.data.candidates import Candidate, load_candidates
from luna.data.ct import HU_MAX, HU_MIN, CenterOutsideScanError, CtScan, ScanReadError, crop_start, find_scans

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.npy"
FAILURE = "build-failed.txt"
INDEX_DTYPE = np.dtype(
    [
        ("series", np.int32),
        ("row", np.int32),
        ("is_nodule", np.bool_),
        ("diameter_mm", np.float64),
        ("center_xyz", np.float64, (3,)),
        ("center_irc", np.int32, (3,)),
        ("offset_irc", np.int32, (3,)),  # the centre's position inside its crop
    ]
)


class CacheBuildError(RuntimeError):
    """The cache could not be built (unreadable scan, nothing left to serve, unwritable folder)."""


# --------------------------------------------------------------------------- atomic writes

def _temporary_name(path: Path) -> Path:
    """A temporary sibling of ``path`` that names its writer (host, pid) so stale ones can be found."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def _write_atomic(path: Path, write: Callable[[object], None]) -> None:
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_json(path: Path, payload: dict) -> None:
    _write_atomic(path, lambda handle: handle.write((json.dumps(payload, indent=1) + "\n").encode()))


def _write_npy(path: Path, array: np.ndarray) -> None:
    _write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by dead processes of this host (a killed build)."""
    host = socket.gethostname()
    for temporary in folder.glob(".*.tmp"):
        _, _, tail = temporary.name.rpartition(f".{host}.")
        pid = tail.removesuffix(".tmp")
        if pid.isdigit() and not _process_alive(int(pid)):
            temporary.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- key and inputs

@dataclass(frozen=True)
class CacheInputs:
    """Everything a cache depends on, resolved from a LUNA16 folder."""

    annotations_csv: Path
    candidates_csv: Path
    scans: dict[str, Path]
    width_irc: tuple[int, int, int]

    @classmethod
    def from_folder(
        cls,
        data_dir: str | Path,
        candidates_file: str = "candidates.csv",
        annotations_file: str = "annotations.csv",
        width_irc: Sequence[int] = (32, 48, 48),
    ) -> CacheInputs:
        """Resolve the CSV paths and the scans of ``data_dir``; raises if anything is missing."""
        data_dir = Path(data_dir)
        scans = find_scans(data_dir)
        if not scans:
            raise FileNotFoundError(f"no scans found: expected {data_dir}/subset*/<seriesuid>.mhd files")
        for name in (annotations_file, candidates_file):
            if not (data_dir / name).is_file():
                raise FileNotFoundError(f"expected the LUNA16 CSV file {data_dir / name}, but it does not exist")
        return cls(data_dir / annotations_file, data_dir / candidates_file, scans, tuple(int(w) for w in width_irc))

    def key(self) -> str:
        """Content key: CSV bytes, scans on disk (uid, subset, .raw size and mtime), crop width, HU window."""
        digest = hashlib.sha256()
        digest.update(json.dumps([FORMAT_VERSION, list(self.width_irc), [HU_MIN, HU_MAX]]).encode())
        for csv_path in (self.annotations_csv, self.candidates_csv):
            digest.update(b"\0csv\0")
            with open(csv_path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        for uid, mhd_path in sorted(self.scans.items()):
            raw_path = mhd_path.with_suffix(".raw")
            raw = raw_path.stat() if raw_path.exists() else None
            stamp = f"{raw.st_size}\0{raw.st_mtime_ns}" if raw else "missing"
            digest.update(f"\0{uid}\0{mhd_path.parent.name}\0{stamp}".encode())
        return digest.hexdigest()[:20]


# --------------------------------------------------------------------------- per-scan work

def _cut_scan(
    mhd_path: Path, centers_xyz: list[tuple[float, float, float]], width_irc: tuple[int, int, int],
    scans_dir: Path, skip_bad_scans: bool,
) -> str:
    """Read one scan, cut all of its crops, write ``<uid>.npy`` then ``<uid>.json``. Runs in a worker."""
    uid = mhd_path.stem
    try:
        scan = CtScan.read(mhd_path)
    except ScanReadError as error:
        if not skip_bad_scans:
            raise
        _write_json(scans_dir / f"{uid}.json", {"error": str(error), "center_irc": [], "crop_start": []})
        return uid
    centers_irc: list[list[int] | None] = []
    starts: list[tuple[int, ...]] = []
    for center_xyz in centers_xyz:
        center_irc = scan.xyz_to_irc(center_xyz)
        try:
            starts.append(crop_start(center_irc, width_irc, scan.hu.shape))
        except CenterOutsideScanError:
            centers_irc.append(None)
            continue
        except ValueError as error:
            raise CacheBuildError(f"scan {uid} ({mhd_path}): {error}") from None
        centers_irc.append(list(center_irc))
    crops = np.empty((len(starts), *width_irc), dtype=np.int16)
    for row, start in enumerate(starts):
        crops[row] = scan.hu[tuple(slice(s, s + w) for s, w in zip(start, width_irc))]
    _write_npy(scans_dir / f"{uid}.npy", crops)
    _write_json(scans_dir / f"{uid}.json", {"error": None, "center_irc": centers_irc,
                                           "crop_start": [list(start) for start in starts]})
    return uid


def _run_jobs(jobs: list[tuple], processes: int) -> None:
    """Run ``_cut_scan`` jobs in-process (processes <= 1) or in a spawned pool; first error wins."""
    total = len(jobs)
    if processes <= 1 or total <= 1:
        for done, job in enumerate(jobs, start=1):
            _cut_scan(*job)
            log.info("crop cache: %d/%d scans cut", done, total)
        return
    # The platform's default start method, as DataLoader workers use; workers touch only numpy and SimpleITK.
    with ProcessPoolExecutor(max_workers=processes) as pool:
        pending = {pool.submit(_cut_scan, *job) for job in jobs}
        done_count = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                done_count += 1
            log.info("crop cache: %d/%d scans cut", done_count, total)


# --------------------------------------------------------------------------- build

def check_writable(folder: Path) -> None:
    """Fail fast, before any work, when the cache folder cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CacheBuildError(f"cache folder {folder} is not writable: {error.strerror or error}") from None


def build_cache(
    inputs: CacheInputs,
    cache_dir: str | Path,
    processes: int = 1,
    skip_bad_scans: bool = False,
) -> Path:
    """Build (or reuse, or finish) the crop cache for ``inputs`` under ``cache_dir``.

    Args:
        inputs: the LUNA16 files and crop width.
        cache_dir: parent folder; the cache is ``cache_dir/luna-<key>``.
        processes: scans read in parallel. Peak memory is about ``processes`` x (one scan + its
            crops), whatever the dataset size.
        skip_bad_scans: log a warning and go on when a scan cannot be read, instead of failing.

    Returns:
        The cache folder, complete.

    Raises:
        CacheBuildError: unwritable folder, unreadable scan (naming it), or no candidate left.
            The error is also left in the cache folder for processes waiting on this build
            (``open_built_cache``).
        ScanReadError: an unreadable scan when ``skip_bad_scans`` is false.
    """
    try:
        return _build(inputs, Path(cache_dir), processes, skip_bad_scans)
    except Exception as error:
        try:
            path = Path(cache_dir) / f"luna-{inputs.key()}"
            path.mkdir(parents=True, exist_ok=True)
            _write_atomic(path / FAILURE, lambda handle: handle.write(f"{type(error).__name__}: {error}".encode()))
        except OSError:
            pass  # an unwritable folder cannot hold the note; the error itself still propagates
        raise


def _build(inputs: CacheInputs, cache_dir: Path, processes: int, skip_bad_scans: bool) -> Path:
    check_writable(cache_dir)
    path = cache_dir / f"luna-{inputs.key()}"
    if (path / MANIFEST).is_file():
        log.info("crop cache %s is complete; reusing it", path)
        return path
    scans_dir = path / "scans"
    scans_dir.mkdir(parents=True, exist_ok=True)
    (path / FAILURE).unlink(missing_ok=True)
    _remove_stale_temporaries(scans_dir)
    _remove_stale_temporaries(path)

    candidates = load_candidates(inputs.annotations_csv, inputs.candidates_csv)
    by_series: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_series.setdefault(candidate.series_uid, []).append(candidate)
    missing = sorted(uid for uid in by_series if uid not in inputs.scans)
    if missing:
        rows = sum(len(by_series.pop(uid)) for uid in missing)
        log.warning(
            "%d candidate rows of %d series in %s have no scan under %s: skipped",
            rows, len(missing), inputs.candidates_csv.name, inputs.candidates_csv.parent,
        )
    jobs = [
        (inputs.scans[uid], [c.center_xyz for c in rows], inputs.width_irc, scans_dir, skip_bad_scans)
        for uid, rows in sorted(by_series.items())
        if not (scans_dir / f"{uid}.json").is_file()
    ]
    log.info("crop cache %s: cutting %d of %d scans with %d process(es)", path, len(jobs), len(by_series), processes)
    _run_jobs(jobs, processes)
    _write_index(path, candidates, by_series, inputs)
    return path


def _write_index(path: Path, candidates: list[Candidate], by_series: dict[str, list[Candidate]],
                 inputs: CacheInputs) -> None:
    """Assemble ``index.npy`` in reference order from the per-scan records, then the manifest."""
    series_uids = sorted(by_series)
    series_number = {uid: k for k, uid in enumerate(series_uids)}
    centers_by_series, starts_by_series, skipped_scans = {}, {}, []
    for uid in series_uids:
        record = json.loads((path / "scans" / f"{uid}.json").read_text())
        if record["error"]:
            skipped_scans.append(uid)
            log.warning("skipped scan %s: %s", uid, record["error"])
        centers_by_series[uid] = iter(record["center_irc"])
        starts_by_series[uid] = record["crop_start"]
    rows = {uid: 0 for uid in series_uids}
    records = []
    for candidate in candidates:
        uid = candidate.series_uid
        if uid not in by_series or uid in skipped_scans:
            continue
        center_irc = next(centers_by_series[uid])
        if center_irc is None:
            log.warning("candidate of series %s at %s (xyz mm) lies outside its scan: skipped", uid, candidate.center_xyz)
            continue
        start = starts_by_series[uid][rows[uid]]
        offset = [center - low for center, low in zip(center_irc, start)]
        records.append((series_number[uid], rows[uid], candidate.is_nodule, candidate.diameter_mm,
                        candidate.center_xyz, center_irc, offset))
        rows[uid] += 1
    if not records:
        raise CacheBuildError(
            f"no candidate left to serve from {inputs.candidates_csv}: none of its series has a readable "
            "scan with the candidate inside it"
        )
    index = np.array(records, dtype=INDEX_DTYPE)
    _write_npy(path / INDEX, index)
    manifest = {
        "format_version": FORMAT_VERSION,
        "width_irc": list(inputs.width_irc),
        "hu_window": [HU_MIN, HU_MAX],
        "annotations_csv": inputs.annotations_csv.name,
        "candidates_csv": inputs.candidates_csv.name,
        "series": [{"uid": uid, "subset": inputs.scans[uid].parent.name} for uid in series_uids],
        "skipped_scans": skipped_scans,
        "candidates": len(records),
        "positives": int(index["is_nodule"].sum()),
    }
    _write_json(path / MANIFEST, manifest)
    log.info("crop cache %s complete: %d candidates (%d positives)", path, len(records), manifest["positives"])


# --------------------------------------------------------------------------- read

class CropCache:
    """A complete cache, opened read-only. ``crop(k)`` is a zero-copy int16 view.

    Picklable for DataLoader workers: the memory maps are reopened lazily in each process.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a complete crop cache (no {MANIFEST})")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{self.path}: cache format {self.manifest['format_version']}, expected {FORMAT_VERSION}")
        self.series_uids: list[str] = [entry["uid"] for entry in self.manifest["series"]]
        self.subsets: list[str] = [entry["subset"] for entry in self.manifest["series"]]
        self.width_irc: tuple[int, int, int] = tuple(self.manifest["width_irc"])
        self.index = np.load(self.path / INDEX)
        self._derive()

    def _derive(self) -> None:
        """Contiguous per-field copies of the index: reading a structured record per sample is slow."""
        self.center_xyz = np.ascontiguousarray(self.index["center_xyz"])
        self.offset_irc = np.ascontiguousarray(self.index["offset_irc"])
        self.series_of = np.ascontiguousarray(self.index["series"], dtype=np.int64)
        self._row_of = np.ascontiguousarray(self.index["row"], dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    _DERIVED = ("center_xyz", "offset_irc", "series_of", "_row_of", "_maps")

    def __getstate__(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name not in self._DERIVED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._derive()

    def _scan_crops(self, series: int) -> np.ndarray:
        crops = self._maps.get(series)
        if crops is None:
            crops = np.load(self.path / "scans" / f"{self.series_uids[series]}.npy", mmap_mode="r")
            self._maps[series] = crops
        return crops

    def crop(self, k: int) -> np.ndarray:
        """The crop of candidate ``k`` (index order) as a read-only int16 view of shape ``width_irc``."""
        return self._scan_crops(int(self.series_of[k]))[int(self._row_of[k])]

    def series_uid(self, k: int) -> str:
        """The series of candidate ``k``."""
        return self.series_uids[int(self.series_of[k])]

    def candidate(self, k: int) -> Candidate:
        """Candidate ``k`` as loaded from the CSVs."""
        return Candidate(
            self.series_uid(k),
            tuple(self.center_xyz[k].tolist()),
            bool(self.index["is_nodule"][k]),
            float(self.index["diameter_mm"][k]),
        )


def open_built_cache(cache_dir: str | Path, inputs: CacheInputs) -> CropCache:
    """Open the cache that ``build_cache`` made for ``inputs``, or re-raise the builder's failure.

    Processes that waited while another one built the cache call this: they get the builder's own
    error message rather than a confusing "not found" (or a hang).
    """
    path = Path(cache_dir) / f"luna-{inputs.key()}"
    failure = path / FAILURE
    if not (path / MANIFEST).is_file() and failure.is_file():
        raise CacheBuildError(f"the crop cache build failed in another process: {failure.read_text()}")
    return CropCache(path)
