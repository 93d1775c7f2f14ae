"""The volume store: each scan's voxels and its nodule mask, written once and read many times.

nnU-Net's lesson: preprocess every case once into an array store, then sample patches from it.
A build reads each volume (SimpleITK), resamples it to ``spacing_mm`` when asked (linear; the
scan's own origin and direction kept), stores its values as int16 (``round(clip(v, window) *
scale)``, as the crop cache does), draws its mask (from its findings, ``luna.segmentation.masks``,
or from its mask file, resampled by nearest neighbour) and writes::

    images/<name>.image.npy   int16 [I, R, C]: the voxels
    images/<name>.mask.npy    uint8 [I, R, C]: 1 on a nodule
    images/<name>.json        the stored grid (shape, origin, spacing, direction), the findings
                              (x, y, z, diameter in mm), both arrays' checksums; or the read error.
                              Its presence marks the volume done
    manifest.json             key, settings, the volumes (id, path, group, fold); written last

Like the crop cache (``luna.data.cache``), it is keyed by its inputs (the source's fingerprint,
every file's identity, the settings), built in parallel and resumably (a killed build goes on
where it stopped), and checked: each array's XXH3 is verified the first time a process reads it,
and a damaged volume is an error naming it and the file to delete, never a silent patch.
``load_volume`` is the one preprocessing of a scan: ``luna.detect`` applies it to new scans.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.data.cache.build import check_writable, file_identity, leave_failure, write_json, write_npy
from luna.data.cache.read import FAILURE, IMAGES, MANIFEST, CacheBuildError, crop_checksum
from luna.data.crops import check_spacing
from luna.data.jobs import run_jobs
from luna.data.table import file_name_of
from luna.data.volume import HU_WINDOW, Geometry, ScanReadError, Volume, check_intensity, stored_values
from luna.io.files import describe_bytes, folder_size, remove_stale_temporaries
from luna.segmentation.candidates import group_components
from luna.segmentation.grids import resample, resampled_grid
from luna.segmentation.masks import NODULE_THRESHOLD_HU, ball_mask
from luna.segmentation.sources import VolumeSource, VolumeTable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class VolumeSettings:
    """How volumes are stored.

    Args:
        spacing_mm: resample every volume to this voxel size along I, R, C (millimetres); None
            keeps each scan's own grid.
        intensity_window, intensity_scale: stored values are ``round(clip(v, window) * scale)``.
        mask_threshold: a nodule's mask keeps the voxels of its ball above this value (the
            volume's own units: HU for CT); None keeps the whole ball.
    """

    spacing_mm: tuple[float, float, float] | None = None
    intensity_window: tuple[float, float] = HU_WINDOW
    intensity_scale: float = 1.0
    mask_threshold: float | None = NODULE_THRESHOLD_HU

    def __post_init__(self) -> None:
        if self.spacing_mm is not None:
            object.__setattr__(self, "spacing_mm", check_spacing(self.spacing_mm, "data.spacing_mm"))
        object.__setattr__(
            self, "intensity_window", check_intensity(self.intensity_window, self.intensity_scale)
        )

    def describe(self) -> str:
        grid = (
            "each scan's own voxels"
            if self.spacing_mm is None
            else f"resampled to {'x'.join(f'{s:g}' for s in self.spacing_mm)} mm"
        )
        return grid

    def record(self) -> dict:
        return {
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "intensity_window": list(self.intensity_window),
            "intensity_scale": self.intensity_scale,
            "mask_threshold": self.mask_threshold,
        }


def load_volume(path: str | Path, settings: VolumeSettings) -> tuple[np.ndarray, Geometry]:
    """A volume as the store keeps it: int16 stored values on the stored grid, and that grid.

    Raises:
        ScanReadError: the file cannot be read (naming it).
    """
    volume = Volume.read(path, window=None)
    geometry = Geometry(volume.voxels.shape, volume.origin_xyz, volume.spacing_xyz, volume.direction)
    values = volume.voxels
    if settings.spacing_mm is not None:
        target = resampled_grid(geometry, settings.spacing_mm)
        values = resample(values, geometry, target, fill=settings.intensity_window[0])
        geometry = target
    return stored_values(values, settings.intensity_window, settings.intensity_scale), geometry


def _geometry_record(geometry: Geometry) -> dict:
    return {
        "shape_irc": list(geometry.shape_irc),
        "origin_xyz": geometry.origin_xyz.tolist(),
        "spacing_xyz": geometry.spacing_xyz.tolist(),
        "direction": geometry.direction.ravel().tolist(),
    }


def geometry_of(record: dict) -> Geometry:
    """The stored grid a record describes."""
    return Geometry(
        tuple(record["shape_irc"]),
        np.array(record["origin_xyz"]),
        np.array(record["spacing_xyz"]),
        np.array(record["direction"]).reshape(3, 3),
    )


def _store_volume(
    image_path: Path,
    mask_path: Path | None,
    findings: np.ndarray,
    settings: VolumeSettings,
    files: tuple[Path, Path, Path],
    skip_bad_scans: bool,
) -> str:
    """Read, resample and store one volume and its mask, then its record. Runs in a worker."""
    image_npy, mask_npy, record = files
    try:
        values, geometry = load_volume(image_path, settings)
        if mask_path is not None:
            labels = Volume.read(mask_path, window=None)
            label_grid = Geometry(
                labels.voxels.shape, labels.origin_xyz, labels.spacing_xyz, labels.direction
            )
            mask = (resample(labels.voxels, label_grid, geometry, nearest=True) > 0).astype(np.uint8)
            found = group_components(mask, geometry)
            findings = np.column_stack([found.center_xyz, found.diameter_mm]).reshape(-1, 4)
        else:
            mask = ball_mask(
                geometry,
                findings[:, :3],
                findings[:, 3],
                values / settings.intensity_scale,
                settings.mask_threshold,
            )
    except ScanReadError as error:
        if not skip_bad_scans:
            raise
        write_json(record, {"error": str(error)})
        return image_path.name
    write_npy(image_npy, values)
    write_npy(mask_npy, mask)
    write_json(
        record,
        {
            "error": None,
            **_geometry_record(geometry),
            "findings": findings.tolist(),
            "checksum_image": crop_checksum(values),
            "checksum_mask": crop_checksum(mask),
            "foreground_voxels": int(mask.sum()),
        },
    )
    return image_path.name


def store_key(source: VolumeSource, settings: VolumeSettings) -> str:
    """The content key of ``source`` stored with ``settings``."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, settings.record(), source.fingerprint()]).encode())
    for path in source.image_files():
        digest.update(f"\0{path.parent.name}/{path.name}\0{file_identity(path)}".encode())
    return digest.hexdigest()[:20]


def store_path(cache_dir: str | Path, source: VolumeSource, settings: VolumeSettings) -> Path:
    return Path(cache_dir) / f"volumes-{store_key(source, settings)}"


def _paths(folder: Path, name: str) -> tuple[Path, Path, Path]:
    return folder / f"{name}.image.npy", folder / f"{name}.mask.npy", folder / f"{name}.json"


def build_store(
    source: VolumeSource,
    cache_dir: str | Path,
    settings: VolumeSettings,
    processes: int = 1,
    skip_bad_scans: bool = False,
) -> Path:
    """Build (or reuse, or finish) the volume store of ``source``; its folder.

    Raises:
        CacheBuildError: unwritable folder, full disk, or no volume left.
        ScanReadError: an unreadable volume when ``skip_bad_scans`` is false.
    """
    path = store_path(cache_dir, source, settings)
    if (path / MANIFEST).is_file():
        log.info("volume store %s is complete; reusing it", path)
        return path
    existed = path.exists()
    try:
        return _build(source, path, settings, processes, skip_bad_scans)
    except Exception as error:
        leave_failure(path, error, existed)
        raise


def _build(
    source: VolumeSource, path: Path, settings: VolumeSettings, processes: int, skip_bad_scans: bool
) -> Path:
    check_writable(path.parent)
    check_writable(path)
    images = path / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    (path / FAILURE).unlink(missing_ok=True)
    for folder in (path, images):
        remove_stale_temporaries(folder)
    table = source.table()
    names = [file_name_of(image_id) for image_id in table.image_ids]
    jobs = [
        (
            table.image_paths[k],
            table.mask_paths[k],
            np.asarray(table.findings[k], float).reshape(-1, 4),
            settings,
            _paths(images, names[k]),
            skip_bad_scans,
        )
        for k in range(len(table))
        if not _readable(_paths(images, names[k])[2])
    ]
    log.info(
        "volume store %s (%s; %s): storing %d of %d volumes with %d process(es)",
        path,
        source.describe(),
        settings.describe(),
        len(jobs),
        len(table),
        processes,
    )
    run_jobs(_store_volume, jobs, processes, "volume store", "volumes stored")
    _write_manifest(path, table, names, settings)
    return path


def _readable(record: Path) -> bool:
    try:
        json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return True


def _write_manifest(path: Path, table: VolumeTable, names: list[str], settings: VolumeSettings) -> None:
    records = [json.loads(_paths(path / IMAGES, name)[2].read_text()) for name in names]
    skipped = [image_id for image_id, record in zip(table.image_ids, records, strict=True) if record["error"]]
    for image_id, record in zip(table.image_ids, records, strict=True):
        if record["error"]:
            log.warning("skipped volume %s: %s", image_id, record["error"])
    if len(skipped) == len(records):
        raise CacheBuildError("no volume left to store: none could be read")
    manifest = {
        "format_version": FORMAT_VERSION,
        "settings": settings.record(),
        "images": [
            {
                "id": image_id,
                "file": name,
                "path": str(Path(image_path).resolve()),
                "group": group,
                "fold": int(fold),
                "stored": not record["error"],
            }
            for image_id, name, image_path, group, fold, record in zip(
                table.image_ids, names, table.image_paths, table.groups, table.folds, records, strict=True
            )
        ],
        "skipped_images": skipped,
    }
    write_json(path / MANIFEST, manifest)
    findings = sum(len(record.get("findings", [])) for record in records)
    log.info(
        "volume store %s complete: %d volumes, %d findings, %s on disk",
        path,
        len(records) - len(skipped),
        findings,
        describe_bytes(folder_size(path)),
    )


class VolumeStore:
    """A complete volume store, opened read-only: ``image(k)`` and ``mask(k)`` are verified
    memory-mapped arrays; picklable for DataLoader workers (maps reopen in each process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            failure = self.path / FAILURE
            if failure.is_file():
                raise CacheBuildError(
                    f"the volume store build failed in another process: {failure.read_text()}"
                )
            raise FileNotFoundError(f"{self.path} is not a complete volume store (no {MANIFEST})")
        self.manifest = json.loads(manifest.read_text())
        entries = [entry for entry in self.manifest["images"] if entry["stored"]]
        self.image_ids = [entry["id"] for entry in entries]
        self.groups = [entry["group"] for entry in entries]
        self.folds = np.array([entry["fold"] for entry in entries], dtype=np.int64)
        self.files = [entry["file"] for entry in entries]
        self.records = [json.loads(_paths(self.path / IMAGES, file)[2].read_text()) for file in self.files]
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_maps"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._maps = {}

    def geometry(self, k: int) -> Geometry:
        return geometry_of(self.records[k])

    def findings(self, k: int) -> np.ndarray:
        """``[n, 4]`` the volume's findings: x, y, z, diameter in millimetres."""
        return np.asarray(self.records[k]["findings"], dtype=np.float64).reshape(-1, 4)

    def _array(self, k: int, part: str) -> np.ndarray:
        array = self._maps.get((k, part))
        if array is None:
            image_npy, mask_npy, _ = _paths(self.path / IMAGES, self.files[k])
            file = image_npy if part == "image" else mask_npy
            try:
                array = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise CacheBuildError(
                    f"{file} cannot be read ({error}): delete {self.path} to rebuild it"
                ) from None
            if crop_checksum(array) != self.records[k][f"checksum_{part}"]:
                raise CacheBuildError(
                    f"the stored {part} of volume {self.image_ids[k]} ({file}) is damaged (checksum "
                    f"mismatch): delete {self.path} to rebuild the store"
                )
            self._maps[k, part] = array
        return array

    def image(self, k: int) -> np.ndarray:
        """int16 ``[I, R, C]``, the stored values of volume ``k``."""
        return self._array(k, "image")

    def mask(self, k: int) -> np.ndarray:
        """uint8 ``[I, R, C]``, 1 on a nodule."""
        return self._array(k, "mask")
