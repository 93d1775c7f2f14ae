"""The crop cache, build side: cut every crop of a ``CropTable`` once, resumably and verifiably.

The cache key hashes the source's inputs (``CropSource.fingerprint``: the CSV bytes and settings),
the identity of every image file (a MetaImage's header bytes and its voxel file's size and
modification time; any other file's size and modification time), the crop width, the intensity
window and scale and ``FORMAT_VERSION``. A changed input gives a new cache; an unchanged one is
reused without opening a volume. Hashing 120 GB of voxels is not an option, so a volume rewritten
in place counts as changed (its modification time moves) and a copy that keeps times (``cp -p``,
``rsync -a``) reuses the cache.

Every file is written under a temporary name and renamed, and an image whose record exists is
never cut again, so a build killed at any moment resumes and ends with the same bytes as an
uninterrupted one; two builders racing on one folder rename identical contents. A complete cache
is checked before it is reused (manifest, columns, each image file's size and shape): a damaged
or missing part is rebuilt, that image only, with a warning naming it. A complete cache on
read-only storage is used as it is.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.data.cache.read import (
    COLUMNS,
    COLUMNS_DIR,
    FAILURE,
    FORMAT_VERSION,
    IMAGES,
    MANIFEST,
    CacheBuildError,
    crop_checksum,
)
from luna.data.crops import crop_starts
from luna.data.table import CropSource, CropTable, file_name_of
from luna.data.volume import ScanReadError, Volume, check_intensity, read_mhd_header, xyz_to_irc_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    """How crops are cut: ``width_irc`` voxels around each centre, intensities ``round(clip(v, window) * scale)``."""

    width_irc: tuple[int, int, int]
    intensity_window: tuple[float, float]
    intensity_scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.width_irc) != 3 or any(int(w) < 1 for w in self.width_irc):
            raise ValueError(f"width_irc={list(self.width_irc)}: expected three positive voxel counts (I, R, C)")
        check_intensity(self.intensity_window, self.intensity_scale)


# --------------------------------------------------------------------------- atomic writes

def _temporary_name(path: Path) -> Path:
    """A temporary sibling of ``path`` that names its writer (host, pid) so stale ones can be found."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def _write_atomic(path: Path, write: Callable[[object], None], size_hint: int) -> None:
    """Write through a temporary file, fsync, rename; a full disk is reported with what it needed."""
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        full = error.errno == errno.ENOSPC or (error.errno is None and "requested and" in str(error))
        if not full:
            raise
        free = shutil.disk_usage(path.parent).free
        raise CacheBuildError(f"no space left on the device for {path}: it needs {size_hint:,} bytes, "
                              f"{free:,} are free in {path.parent}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _write_json(path: Path, payload: dict) -> None:
    data = (json.dumps(payload) + "\n").encode()
    _write_atomic(path, lambda handle: handle.write(data), len(data))


def _write_npy(path: Path, array: np.ndarray) -> None:
    _write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False), array.nbytes + 128)


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


# --------------------------------------------------------------------------- key

def file_identity(path: Path) -> str:
    """What identifies an image file's contents without reading its voxels."""
    if path.is_dir():  # a DICOM series: every file's name, size and time
        stamps = sorted(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in path.iterdir() if f.is_file())
        return hashlib.sha256("\n".join(stamps).encode()).hexdigest()
    if not path.exists():
        return "missing"
    stat = path.stat()
    identity = f"{stat.st_size}:{stat.st_mtime_ns}"
    if path.suffix.lower() == ".mhd":  # the header holds the geometry and type; the voxels are beside it
        data_file = read_mhd_header(path).get("ElementDataFile", "LOCAL")
        raw = path.parent / data_file
        raw_stamp = f"{raw.stat().st_size}:{raw.stat().st_mtime_ns}" if data_file != "LOCAL" and raw.is_file() else data_file
        identity = f"{hashlib.sha256(path.read_bytes()).hexdigest()}:{raw_stamp}"
    return identity


def cache_key(source: CropSource, settings: CacheSettings) -> str:
    """The content key of the cache of ``source`` cut with ``settings``."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, list(settings.width_irc), list(settings.intensity_window),
                              settings.intensity_scale, source.fingerprint()]).encode())
    for path in source.image_files():  # where the dataset lives is not part of it: a moved copy reuses the cache
        digest.update(f"\0{path.parent.name}/{path.name}\0{file_identity(path)}".encode())
    return digest.hexdigest()[:20]


def cache_path(cache_dir: str | Path, source: CropSource, settings: CacheSettings) -> Path:
    """Where the cache of ``source`` lives under ``cache_dir``."""
    return Path(cache_dir) / f"luna-{cache_key(source, settings)}"


# --------------------------------------------------------------------------- per-image work

def _cut_image(image_path: Path, centers_xyz: np.ndarray, settings: CacheSettings, npy: Path, record: Path,
               skip_bad_scans: bool) -> str:
    """Read one volume, cut all of its crops, write the ``.npy`` then the record. Runs in a worker."""
    try:
        volume = Volume.read(image_path, settings.intensity_window, settings.intensity_scale)
    except ScanReadError as error:
        if not skip_bad_scans:
            raise
        _write_json(record, {"error": str(error), "center_irc": [], "crop_start": [], "checksum": []})
        return image_path.name
    center_irc = xyz_to_irc_many(centers_xyz, volume.origin_xyz, volume.spacing_xyz, volume.direction)
    inside = ((center_irc >= 0) & (center_irc < np.asarray(volume.voxels.shape))).all(axis=1)
    try:
        starts = crop_starts(center_irc[inside], settings.width_irc, volume.voxels.shape)
    except ValueError as error:
        raise CacheBuildError(f"image {volume.name} ({image_path}): {error}") from None
    width = settings.width_irc
    crops = np.empty((len(starts), *width), dtype=np.int16)
    for row, (i, r, c) in enumerate(starts.tolist()):
        crops[row] = volume.voxels[i : i + width[0], r : r + width[1], c : c + width[2]]
    _write_npy(npy, crops)
    centers = [irc if keep else None for irc, keep in zip(center_irc.tolist(), inside.tolist())]
    _write_json(record, {"error": None, "center_irc": centers, "crop_start": starts.tolist(),
                         "checksum": [crop_checksum(crop) for crop in crops]})
    return image_path.name


def _die_with_parent() -> None:
    """Pool initializer: a build worker ends when the builder does (even when it is SIGKILLed)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the call above took effect
        os._exit(1)


class _Progress:
    """Logs "N/M images cut" as images finish, at most every 10 seconds, and at the end."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.last = total, 0, time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if self.done == self.total or time.monotonic() - self.last > 10:
            log.info("crop cache: %d/%d images cut", self.done, self.total)
            self.last = time.monotonic()


def _run_jobs(jobs: list[tuple], processes: int) -> None:
    """Run ``_cut_image`` jobs in-process (processes <= 1) or in a pool; the first error wins."""
    progress = _Progress(len(jobs))
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            _cut_image(*job)
            progress.advance()
        return
    # Fork where there is fork: workers start at once and share this process's pages instead of
    # re-importing the caller's __main__ (the CLI's, with torch) as spawn and forkserver do. Freezing
    # the collector keeps the children's GC off the parent's objects, so those pages stay shared
    # (not copied); each job carries only its own image's rows.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    gc.freeze()
    try:
        with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_die_with_parent) as pool:
            pending = {pool.submit(_cut_image, *job) for job in jobs}
            while pending:
                finished, pending = wait(pending, timeout=10, return_when=FIRST_EXCEPTION)
                for future in finished:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    progress.advance()
    finally:
        gc.unfreeze()


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
    source: CropSource,
    cache_dir: str | Path,
    settings: CacheSettings,
    processes: int = 1,
    skip_bad_scans: bool = False,
) -> Path:
    """Build (or check and reuse, or finish, or repair) the crop cache of ``source``.

    Args:
        source: the dataset's rows.
        cache_dir: parent folder; the cache is ``cache_dir/luna-<key>``.
        settings: crop width and intensity mapping.
        processes: volumes read in parallel. Peak memory is about ``processes`` x (one volume +
            its crops), whatever the dataset size; each worker receives only its image's rows.
        skip_bad_scans: log a warning and go on when a volume cannot be read, instead of failing.

    Returns:
        The cache folder, complete.

    Raises:
        CacheBuildError: unwritable folder or full disk (naming the file), a crop wider than its
            volume, or no row left to serve. The error is also left in the cache folder for
            processes waiting on this build (``open_built_cache``).
        ScanReadError: an unreadable volume when ``skip_bad_scans`` is false.
    """
    path = cache_path(cache_dir, source, settings)
    if _is_sound(path):
        log.info("crop cache %s is complete; reusing it", path)
        return path
    try:
        return _build(source, path, settings, processes, skip_bad_scans)
    except Exception as error:
        try:
            path.mkdir(parents=True, exist_ok=True)
            message = f"{type(error).__name__}: {error}".encode()
            _write_atomic(path / FAILURE, lambda handle: handle.write(message), len(message))
        except (OSError, CacheBuildError):
            pass  # an unwritable folder cannot hold the note; the error itself still propagates
        raise


def _is_sound(path: Path) -> bool:
    """Whether a cache is complete and every part of it is intact (sizes and headers, not bytes)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        crops = int(manifest["crops"])
        for name in (*COLUMNS, *manifest.get("extra_columns", [])):
            if len(np.load(path / COLUMNS_DIR / f"{name}.npy", mmap_mode="r")) != crops:
                raise ValueError(f"column {name} does not have {crops} rows")
        damaged = [entry["id"] for entry in manifest["images"] if entry["crops"] and not _image_file_sound(path, entry)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("crop cache %s is damaged (%s): repairing it", path, error)
        return False
    if damaged:
        log.warning("crop cache %s: the crops of %d image(s) are damaged or missing (%s): cutting them again",
                    path, len(damaged), ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
        for entry in manifest["images"]:
            if entry["id"] in damaged:
                (path / IMAGES / f"{entry['file']}.json").unlink(missing_ok=True)
        return False
    return True


def _image_file_sound(path: Path, entry: dict) -> bool:
    npy = path / IMAGES / f"{entry['file']}.npy"
    record = path / IMAGES / f"{entry['file']}.json"
    try:
        crops = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return record.is_file() and crops.shape[0] == entry["crops"] and crops.dtype == np.int16


def _build(source: CropSource, path: Path, settings: CacheSettings, processes: int, skip_bad_scans: bool) -> Path:
    check_writable(path.parent)
    images_dir = path / IMAGES
    images_dir.mkdir(parents=True, exist_ok=True)
    (path / FAILURE).unlink(missing_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # rewritten last, once every part is sound
    for folder in (path, images_dir, path / COLUMNS_DIR):
        _remove_stale_temporaries(folder)
    table = source.table()
    order, starts = table.rows_of_image()
    files = [file_name_of(image_id) for image_id in table.image_ids]
    present = [k for k, image_path in enumerate(table.image_paths) if image_path.exists()]
    missing = sorted(set(np.unique(table.image).tolist()) - set(present))
    if missing:
        rows = int(np.isin(table.image, missing).sum())
        log.warning("%d rows of %d images have no volume on disk (e.g. %s): skipped", rows, len(missing),
                    table.image_paths[missing[0]])
    jobs = []
    for k in present:
        record = images_dir / f"{files[k]}.json"
        rows = order[starts[k] : starts[k + 1]]
        if len(rows) and not _record_readable(record):
            jobs.append((table.image_paths[k], table.center_xyz[rows], settings, images_dir / f"{files[k]}.npy",
                         record, skip_bad_scans))
    log.info("crop cache %s (%s): cutting %d of %d images with %d process(es)", path, source.describe(), len(jobs),
             len(present), processes)
    _run_jobs(jobs, processes)
    _write_columns(path, table, files, set(present), settings)
    return path


def _record_readable(record: Path) -> bool:
    try:
        json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return True


def _write_columns(path: Path, table: CropTable, files: list[str], present: set[int], settings: CacheSettings) -> None:
    """Assemble the per-crop columns in table order from the per-image records, then the manifest."""
    order, starts = table.rows_of_image()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("row", "image_row", "center_irc", "crop_start", "checksum")}
    skipped_images, outside = [], []
    crops_of = np.zeros(len(files), dtype=np.int64)
    for k in sorted(present):
        rows = order[starts[k] : starts[k + 1]]
        if not len(rows):
            continue
        record = json.loads((path / IMAGES / f"{files[k]}.json").read_text())
        if record["error"]:
            skipped_images.append(table.image_ids[k])
            log.warning("skipped image %s: %s", table.image_ids[k], record["error"])
            continue
        inside = np.array([irc is not None for irc in record["center_irc"]], dtype=bool)
        outside += rows[~inside].tolist()
        kept = rows[inside]
        crops_of[k] = len(kept)
        parts["row"].append(kept)
        parts["image_row"].append(np.arange(len(kept)))
        parts["center_irc"].append(np.array([irc for irc in record["center_irc"] if irc is not None], dtype=np.int64).reshape(-1, 3))
        parts["crop_start"].append(np.array(record["crop_start"], dtype=np.int64).reshape(-1, 3))
        parts["checksum"].append(np.array(record["checksum"], dtype=np.uint64))
    if outside:
        first = outside[0]
        log.warning("%d rows lie outside their volume and are skipped (e.g. image %s at %s mm)", len(outside),
                    table.image_ids[table.image[first]], tuple(table.center_xyz[first].tolist()))
    if not parts["row"]:
        raise CacheBuildError("no row left to serve: no image has a readable volume with a centre inside it")
    joined = {name: np.concatenate(values) for name, values in parts.items()}
    in_table_order = np.argsort(joined["row"], kind="stable")
    rows = joined["row"][in_table_order]
    columns = {
        "row": rows,
        "image": table.image[rows],
        "image_row": joined["image_row"][in_table_order],
        "label": table.label[rows],
        "center_xyz": table.center_xyz[rows],
        "center_irc": joined["center_irc"][in_table_order],
        "offset_irc": (joined["center_irc"] - joined["crop_start"])[in_table_order],
        "checksum": joined["checksum"][in_table_order],
        **{name: values[rows] for name, values in table.extra.items()},
    }
    (path / COLUMNS_DIR).mkdir(exist_ok=True)
    for name, values in columns.items():
        _write_npy(path / COLUMNS_DIR / f"{name}.npy", np.ascontiguousarray(values))
    counts = np.bincount(columns["label"], minlength=len(table.class_names))
    manifest = {
        "format_version": FORMAT_VERSION,
        "width_irc": list(settings.width_irc),
        "intensity_window": list(settings.intensity_window),
        "intensity_scale": settings.intensity_scale,
        "class_names": table.class_names,
        "images": [{"id": image_id, "file": files[k], "path": str(Path(table.image_paths[k]).resolve()),
                    "group": table.groups[k], "fold": int(table.folds[k]), "crops": int(crops_of[k])}
                   for k, image_id in enumerate(table.image_ids)],
        "extra_columns": sorted(table.extra),
        "skipped_images": skipped_images,
        "crops": len(rows),
        "crops_per_class": counts.tolist(),
    }
    _write_json(path / MANIFEST, manifest)
    log.info("crop cache %s complete: %d crops (%s)", path, len(rows),
             ", ".join(f"{n} {name}" for n, name in zip(counts.tolist(), table.class_names)))
