"""The crop cache, build side: cut every crop of a ``CropTable`` once, resumably and verifiably.

The cache key hashes the source's inputs (``CropSource.fingerprint``: the CSV bytes and settings),
the identity of every image file (a MetaImage's header bytes and its voxel file's size and
modification time; any other file's size and modification time), the views (each crop's size
and spacing), the intensity window and scale and ``FORMAT_VERSION``. A changed input gives a new
cache; an unchanged one is reused without opening a volume. Hashing 120 GB of voxels is not an
option, so a volume rewritten in place counts as changed (its modification time moves) and a copy
that keeps times (``cp -p``, ``rsync -a``) reuses the cache.

Every file is written under a temporary name and renamed, and an image whose record exists is
never cut again, so a build killed at any moment resumes and ends with the same bytes as an
uninterrupted one; two builders racing on one folder rename identical contents. A complete cache
is checked before it is reused (manifest, columns, each image file's size and shape): a damaged
or missing part is rebuilt, that image only, with a warning naming it. A complete cache on
read-only storage is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
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
    VIEW_COLUMNS,
    CacheBuildError,
    crop_checksum,
    image_file,
    view_column,
)
from luna.data.crops import View
from luna.data.cutting import cut_crops
from luna.data.jobs import run_jobs
from luna.data.table import CropSource, CropTable, file_name_of
from luna.data.volume import (
    HU_WINDOW,
    Geometry,
    MetaHeader,
    ScanReadError,
    Volume,
    check_intensity,
    xyz_to_irc_many,
)
from luna.io.files import (
    DiskFullError,
    describe_bytes,
    folder_size,
    remove_stale_temporaries,
    writable_problem,
    write_atomic,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    """How crops are cut: one crop per view around each centre, intensities
    ``round(clip(v, window) * scale)``.

    Args:
        views: the crops of each row, as the cache keeps them (``View.width_irc`` is the cached
            size; a DataModule's presizing context is already folded in).
        intensity_window, intensity_scale: the stored values.
        view_names: the option that asked for each view, for error messages.
    """

    views: tuple[View, ...]
    intensity_window: tuple[float, float] = HU_WINDOW
    intensity_scale: float = 1.0
    view_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.views or not all(isinstance(view, View) for view in self.views):
            raise ValueError("a crop cache needs at least one View")
        check_intensity(self.intensity_window, self.intensity_scale)

    def view_name(self, view: int) -> str:
        return self.view_names[view] if view < len(self.view_names) else f"view {view}"

    def key_parts(self) -> list:
        """What of these settings changes the cached bytes."""
        return [
            [list(view.width_irc), None if view.spacing_mm is None else list(view.spacing_mm)]
            for view in self.views
        ] + [list(self.intensity_window), self.intensity_scale]


# --------------------------------------------------------------------------- writes


def _write_atomic(path: Path, write: Callable[[object], None], size_hint: int) -> None:
    """``luna.io.files.write_atomic``, a full disk reported as a cache build error."""
    try:
        write_atomic(path, write, size_hint)
    except DiskFullError as error:
        raise CacheBuildError(error.strerror) from None


def write_json(path: Path, payload: dict) -> None:
    """A JSON part of a cache, atomically; a full disk is a ``CacheBuildError``."""
    data = (json.dumps(payload) + "\n").encode()
    _write_atomic(path, lambda handle: handle.write(data), len(data))


def write_npy(path: Path, array: np.ndarray) -> None:
    """An array part of a cache, atomically; a full disk is a ``CacheBuildError``."""
    _write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False), array.nbytes + 128)


# --------------------------------------------------------------------------- key


def file_identity(path: Path) -> str:
    """What identifies an image file's contents without reading its voxels."""
    if path.is_dir():  # a DICOM series: every file's name, size and time
        stamps = sorted(
            f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in path.iterdir() if f.is_file()
        )
        return hashlib.sha256("\n".join(stamps).encode()).hexdigest()
    if not path.exists():
        return "missing"
    stat = path.stat()
    identity = f"{stat.st_size}:{stat.st_mtime_ns}"
    if path.suffix.lower() == ".mhd":  # the header holds the geometry and type; the voxels are beside it
        data = MetaHeader.read(path).data_file
        stamp = (
            f"{data.stat().st_size}:{data.stat().st_mtime_ns}"
            if data is not None and data.is_file()
            else "inline"
        )
        identity = f"{hashlib.sha256(path.read_bytes()).hexdigest()}:{stamp}"
    return identity


def cache_key(source: CropSource, settings: CacheSettings) -> str:
    """The content key of the cache of ``source`` cut with ``settings``."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, settings.key_parts(), source.fingerprint()]).encode())
    for (
        path
    ) in source.image_files():  # where the dataset lives is not part of it: a moved copy reuses the cache
        digest.update(f"\0{path.parent.name}/{path.name}\0{file_identity(path)}".encode())
    return digest.hexdigest()[:20]


def cache_path(cache_dir: str | Path, source: CropSource, settings: CacheSettings) -> Path:
    """Where the cache of ``source`` lives under ``cache_dir``."""
    return Path(cache_dir) / f"luna-{cache_key(source, settings)}"


# --------------------------------------------------------------------------- per-image work


def _cut_image(
    image_path: Path,
    centers_xyz: np.ndarray,
    settings: CacheSettings,
    npys: list[Path],
    record: Path,
    skip_bad_scans: bool,
) -> str:
    """Read one volume, cut all of its crops of every view, write the ``.npy`` files then the record.
    Runs in a worker."""
    try:
        volume = Volume.read(image_path, window=None)  # clipped after cutting (native) or interpolating
    except ScanReadError as error:
        if not skip_bad_scans:
            raise
        write_json(record, {"error": str(error)})
        return image_path.name
    center_irc = xyz_to_irc_many(centers_xyz, volume.origin_xyz, volume.spacing_xyz, volume.direction)
    inside = ((center_irc >= 0) & (center_irc < np.asarray(volume.voxels.shape))).all(axis=1)
    views = []
    for k, (view, npy) in enumerate(zip(settings.views, npys, strict=True)):
        try:
            crops, offset = cut_crops(
                volume, centers_xyz[inside], view, settings.intensity_window, settings.intensity_scale
            )
        except ValueError as error:
            raise CacheBuildError(
                f"image {volume.name} ({image_path}), {settings.view_name(k)}: {error}"
            ) from None
        write_npy(npy, crops)
        views.append({"offset_irc": offset.tolist(), "checksum": [crop_checksum(crop) for crop in crops]})
    write_json(
        record,
        {
            "error": None,
            "center_irc": [
                irc if keep else None for irc, keep in zip(center_irc.tolist(), inside.tolist(), strict=True)
            ],
            "spacing_irc": volume.spacing_xyz[::-1].tolist(),
            "shape_irc": list(volume.voxels.shape),
            "views": views,
        },
    )
    return image_path.name


# --------------------------------------------------------------------------- build


def check_writable(folder: Path) -> None:
    """Fail fast, before any work, when the cache folder cannot be created or written."""
    problem = writable_problem(folder)
    if problem:
        raise CacheBuildError(f"cache folder {problem}")


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
        settings: the views (crop sizes and spacings) and the intensity mapping.
        processes: volumes read in parallel. Peak memory is about ``processes`` x (one volume +
            its crops), whatever the dataset size; each worker receives only its image's rows.
        skip_bad_scans: log a warning and go on when a volume cannot be read, instead of failing.

    Returns:
        The cache folder, complete.

    Raises:
        CacheBuildError: unwritable folder or full disk (naming the file), a native crop wider
            than its volume, a physical view larger than every volume, or no row left to serve. The
            error is also left in the cache folder for
            processes waiting on this build (``open_built_cache``).
        ScanReadError: an unreadable volume when ``skip_bad_scans`` is false.
    """
    path = cache_path(cache_dir, source, settings)
    if _is_sound(path):
        log.info("crop cache %s is complete; reusing it", path)
        return path
    existed = path.exists()
    try:
        return _build(source, path, settings, processes, skip_bad_scans)
    except Exception as error:
        leave_failure(path, error, existed)
        raise


def leave_failure(path: Path, error: Exception, existed: bool) -> None:
    """After a failed build: a folder this build made and filled with no crop goes (nobody would
    reuse it); one holding crops stays, for the next build to resume, with the error in
    ``build-failed.txt`` for processes waiting on this build (``open_built_cache``)."""
    images = path / IMAGES
    holds_crops = images.is_dir() and any(name.suffix == ".npy" for name in images.iterdir())
    try:
        if not existed and not holds_crops:
            shutil.rmtree(path, ignore_errors=True)
            return
        path.mkdir(parents=True, exist_ok=True)
        message = f"{type(error).__name__}: {error}".encode()
        _write_atomic(path / FAILURE, lambda handle: handle.write(message), len(message))
    except (OSError, CacheBuildError):
        pass  # an unwritable folder cannot hold the note; the error itself still propagates


def _is_sound(path: Path) -> bool:
    """Whether a cache is complete and every part of it is intact (sizes and headers, not bytes)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        crops = int(manifest["crops"])
        views = range(len(manifest["views"]))
        names = [
            *COLUMNS,
            *(view_column(name, k) for k in views for name in VIEW_COLUMNS),
            *manifest["extra_columns"],
        ]
        for name in names:
            if len(np.load(path / COLUMNS_DIR / f"{name}.npy", mmap_mode="r")) != crops:
                raise ValueError(f"column {name} does not have {crops} rows")
        damaged = [
            entry["id"]
            for entry in manifest["images"]
            if entry["crops"] and not all(_image_file_sound(path, entry, k) for k in views)
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("crop cache %s is damaged (%s): repairing it", path, error)
        return False
    if damaged:
        log.warning(
            "crop cache %s: the crops of %d image(s) are damaged or missing (%s): cutting them again",
            path,
            len(damaged),
            ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""),
        )
        for entry in manifest["images"]:
            if entry["id"] in damaged:
                (path / IMAGES / f"{entry['file']}.json").unlink(missing_ok=True)
        return False
    return True


def _image_file_sound(path: Path, entry: dict, view: int) -> bool:
    npy = path / IMAGES / image_file(entry["file"], view)
    record = path / IMAGES / f"{entry['file']}.json"
    try:
        crops = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return record.is_file() and crops.shape[0] == entry["crops"] and crops.dtype == np.int16


def _build(
    source: CropSource, path: Path, settings: CacheSettings, processes: int, skip_bad_scans: bool
) -> Path:
    check_writable(path.parent)
    check_writable(path)  # the folder itself: an incomplete cache on read-only storage cannot be finished
    images_dir = path / IMAGES
    images_dir.mkdir(parents=True, exist_ok=True)
    (path / FAILURE).unlink(missing_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # rewritten last, once every part is sound
    for folder in (path, images_dir, path / COLUMNS_DIR):
        remove_stale_temporaries(folder)
    table = source.table()
    order, starts = table.rows_of_image()
    files = [file_name_of(image_id) for image_id in table.image_ids]
    present = [k for k, image_path in enumerate(table.image_paths) if image_path.exists()]
    missing = sorted(set(np.unique(table.image).tolist()) - set(present))
    if missing:
        rows = int(np.isin(table.image, missing).sum())
        if source.missing_images_expected():
            log.info(
                "%d rows of %d images not on disk (on purpose, as in a partial download): skipped",
                rows,
                len(missing),
            )
        else:
            log.warning(
                "%d rows of %d images have no volume on disk (e.g. %s): skipped",
                rows,
                len(missing),
                table.image_paths[missing[0]],
            )
    jobs = []
    for k in present:
        record = images_dir / f"{files[k]}.json"
        rows = order[starts[k] : starts[k + 1]]
        if len(rows) and not _record_readable(record):
            npys = [images_dir / image_file(files[k], view) for view in range(len(settings.views))]
            jobs.append(
                (table.image_paths[k], table.center_xyz[rows], settings, npys, record, skip_bad_scans)
            )
    check_views_fit(settings, [table.image_paths[k] for k in present])
    log.info(
        "crop cache %s (%s; %s): cutting %d of %d images with %d process(es)",
        path,
        source.describe(),
        ", ".join(view.describe() for view in settings.views),
        len(jobs),
        len(present),
        processes,
    )
    run_jobs(_cut_image, jobs, processes, "crop cache", "images cut")
    records = {
        k: json.loads((images_dir / f"{files[k]}.json").read_text())
        for k in present
        if starts[k + 1] > starts[k]
    }
    columns, crops_of, skipped = _assemble_columns(table, records)
    _write_columns(path, columns)
    _write_manifest(path, table, files, settings, records, crops_of, skipped, len(columns["row"]))
    return path


def _record_readable(record: Path) -> bool:
    try:
        json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return True


UNIT_MISTAKE = 10  # a view more than this many times the largest volume along an axis is a unit mistake


def check_views_fit(settings: CacheSettings, image_paths: list[Path]) -> None:
    """Refuse, before any crop is cut, a physical view that cannot be meant: one larger than every
    volume on every axis, or more than ``UNIT_MISTAKE`` times the largest along one axis (it would
    hold whole volumes and padding), or one whose whole extent along an axis is less than one voxel
    of every volume (its crops would be constant). Both are unit or spacing mistakes
    (``spacing_mm`` is in millimetres). Reads the volumes' headers only (a DICOM series: whole)."""
    physical = [(k, view) for k, view in enumerate(settings.views) if view.spacing_mm is not None]
    if not physical:
        return
    geometries = []
    for path in image_paths:
        try:
            geometries.append(Geometry.read(path))
        except RuntimeError:
            continue  # an unreadable volume is named when its crops are cut
    if not geometries:
        return
    spacing = np.array([geometry.spacing_xyz[::-1] for geometry in geometries])
    extents = np.array([geometry.shape_irc for geometry in geometries]) * spacing
    largest, finest = extents.max(axis=0), spacing.min(axis=0)
    axes = "I, R, C"
    for k, view in physical:
        size = np.multiply(view.width_irc, view.spacing_mm)
        described = f"{settings.view_name(k)}: {view.describe()} ({'x'.join(f'{v:g}' for v in size)} mm)"
        if (extents < size).all() or (size > UNIT_MISTAKE * largest).any():
            raise CacheBuildError(
                f"{described} is larger than every volume (the largest extents are "
                f"{'x'.join(f'{v:.0f}' for v in largest)} mm along {axes}): use fewer voxels or "
                "a finer spacing (spacing_mm is in millimetres)"
            )
        if (size < finest).any():
            raise CacheBuildError(
                f"{described} spans less than one voxel of every volume along some axis (the "
                f"finest spacings are {'x'.join(f'{v:.3g}' for v in finest)} mm along {axes}): "
                "its crops would be constant; is spacing_mm in millimetres?"
            )


def _assemble_columns(
    table: CropTable, records: dict[int, dict]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """The per-crop columns in table order from the per-image records, each image's crop count, and
    the images skipped as unreadable."""
    order, starts = table.rows_of_image()
    views = max((len(record["views"]) for record in records.values() if not record["error"]), default=0)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("row", "image_row", "center_irc")}
    parts.update({view_column(name, k): [] for k in range(views) for name in VIEW_COLUMNS})
    skipped, outside = [], []
    crops_of = np.zeros(len(table.image_ids), dtype=np.int64)
    for k, record in sorted(records.items()):
        rows = order[starts[k] : starts[k + 1]]
        if record["error"]:
            skipped.append(table.image_ids[k])
            log.warning("skipped image %s: %s", table.image_ids[k], record["error"])
            continue
        inside = np.array([irc is not None for irc in record["center_irc"]], dtype=bool)
        outside += rows[~inside].tolist()
        kept = rows[inside]
        crops_of[k] = len(kept)
        parts["row"].append(kept)
        parts["image_row"].append(np.arange(len(kept)))
        parts["center_irc"].append(
            np.array([irc for irc in record["center_irc"] if irc is not None], dtype=np.int64).reshape(-1, 3)
        )
        for view, values in enumerate(record["views"]):
            parts[view_column("offset_irc", view)].append(
                np.array(values["offset_irc"], dtype=np.int64).reshape(-1, 3)
            )
            parts[view_column("checksum", view)].append(np.array(values["checksum"], dtype=np.uint64))
    if outside:
        first = outside[0]
        log.warning(
            "%d rows lie outside their volume and are skipped (e.g. image %s at %s mm)",
            len(outside),
            table.image_ids[table.image[first]],
            tuple(table.center_xyz[first].tolist()),
        )
    if not parts["row"]:
        if records and all(record["error"] for record in records.values()):
            raise CacheBuildError("no row left to serve: no image has a readable volume")
        raise CacheBuildError("no row left to serve: no image has a readable volume with a centre inside it")
    joined = {name: np.concatenate(values) for name, values in parts.items()}
    in_table_order = np.argsort(joined["row"], kind="stable")
    rows = joined["row"][in_table_order]
    columns = {name: values[in_table_order] for name, values in joined.items()}
    columns.update(
        {
            "image": table.image[rows],
            "label": table.label[rows],
            "center_xyz": table.center_xyz[rows],
            **{name: values[rows] for name, values in table.extra.items()},
        }
    )
    return columns, crops_of, skipped


def _write_columns(path: Path, columns: dict[str, np.ndarray]) -> None:
    (path / COLUMNS_DIR).mkdir(exist_ok=True)
    for name, values in columns.items():
        write_npy(path / COLUMNS_DIR / f"{name}.npy", np.ascontiguousarray(values))


def _write_manifest(
    path: Path,
    table: CropTable,
    files: list[str],
    settings: CacheSettings,
    records: dict[int, dict],
    crops_of: np.ndarray,
    skipped: list[str],
    crops: int,
) -> None:
    """The manifest, written last: from now on the cache is complete."""
    counts = np.bincount(
        table.label[np.load(path / COLUMNS_DIR / "row.npy")], minlength=len(table.class_names)
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "views": [
            {
                "width_irc": list(view.width_irc),
                "spacing_mm": None if view.spacing_mm is None else list(view.spacing_mm),
            }
            for view in settings.views
        ],
        "intensity_window": list(settings.intensity_window),
        "intensity_scale": settings.intensity_scale,
        "class_names": table.class_names,
        "images": [
            {
                "id": image_id,
                "file": files[k],
                "path": str(Path(table.image_paths[k]).resolve()),
                "group": table.groups[k],
                "fold": int(table.folds[k]),
                "crops": int(crops_of[k]),
                "spacing_irc": records[k].get("spacing_irc") if k in records else None,
            }
            for k, image_id in enumerate(table.image_ids)
        ],
        "extra_columns": sorted(table.extra),
        "skipped_images": skipped,
        "crops": crops,
        "crops_per_class": counts.tolist(),
    }
    write_json(path / MANIFEST, manifest)
    log.info(
        "crop cache %s complete: %d crops (%s), %s on disk",
        path,
        crops,
        ", ".join(f"{n} {name}" for n, name in zip(counts.tolist(), table.class_names, strict=True)),
        describe_bytes(folder_size(path)),
    )
