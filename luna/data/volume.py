"""One 3D volume: reading it (any file SimpleITK reads, or a DICOM series folder), coordinate
conversion and the reference crop.

Coordinates follow LUNA16.md. CSV centres are XYZ millimetres in the patient frame; arrays are
indexed (I, R, C) = (slice, row, column). The conversions are exactly SimpleITK's physical-point
mapping ``xyz = origin + direction @ (cri * spacing)`` and its inverse, so a non-identity direction
matrix is honoured. (The book multiplies by the inverse direction from the right, which agrees with
this only for symmetric direction matrices such as the identity or axis flips.)

Voxels are kept as int16: ``round(clip(value, window) * scale)``. For CT the window is
[-1000, 1000] HU and the scale 1, which is lossless for LUNA16's integer voxels.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

HU_MIN = -1000
HU_MAX = 1000
HU_WINDOW = (float(HU_MIN), float(HU_MAX))


class ScanReadError(RuntimeError):
    """A volume that cannot be used (missing, truncated, NaN voxels...); the message names the file."""


def xyz_to_irc(
    center_xyz: Sequence[float],
    origin_xyz: np.ndarray,
    spacing_xyz: np.ndarray,
    direction: np.ndarray,
) -> tuple[int, int, int]:
    """Millimetres (x, y, z) to the nearest voxel index (i, r, c), rounding like ``numpy.round``."""
    offset = np.asarray(center_xyz, dtype=np.float64) - origin_xyz
    cri = np.linalg.solve(direction, offset) / spacing_xyz
    c, r, i = np.round(cri).astype(np.int64)
    return int(i), int(r), int(c)


def xyz_to_continuous_irc(
    centers_xyz: np.ndarray, origin_xyz: np.ndarray, spacing_xyz: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """Millimetres ``[n, 3]`` (x, y, z) to continuous voxel indices ``[n, 3]`` float64 (I, R, C),
    unrounded."""
    offset = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3) - origin_xyz
    cri = np.linalg.solve(direction, offset.T).T / spacing_xyz
    return cri[:, ::-1]


def xyz_to_irc_many(
    centers_xyz: np.ndarray, origin_xyz: np.ndarray, spacing_xyz: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """``xyz_to_irc`` of many centres ``[n, 3]`` at once: ``[n, 3]`` int64 (I, R, C)."""
    return np.round(xyz_to_continuous_irc(centers_xyz, origin_xyz, spacing_xyz, direction)).astype(np.int64)


def irc_to_xyz(
    center_irc: Sequence[float],
    origin_xyz: np.ndarray,
    spacing_xyz: np.ndarray,
    direction: np.ndarray,
) -> tuple[float, float, float]:
    """Voxel index (i, r, c) to millimetres (x, y, z): ``direction @ (cri * spacing) + origin``."""
    cri = np.asarray(center_irc, dtype=np.float64)[::-1]
    x, y, z = direction @ (cri * spacing_xyz) + origin_xyz
    return float(x), float(y), float(z)


def check_intensity(window: Sequence[float], scale: float) -> tuple[float, float]:
    """Validate an intensity window and scale: the stored values must fit int16."""
    low, high = (float(v) for v in window)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"intensity_window={list(window)}: expected two finite numbers, low < high")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"intensity_scale={scale}: must be a positive number")
    if max(abs(low), abs(high)) * scale > np.iinfo(np.int16).max:
        raise ValueError(
            f"intensity_window={list(window)} x intensity_scale={scale} does not fit int16 (|value| <= 32767)"
        )
    return low, high


def stored_values(values: np.ndarray, window: Sequence[float], scale: float) -> np.ndarray:
    """Values as luna stores them: ``round(clip(value, window) * scale)`` as int16 (CT: HU in [-1000, 1000]).

    Integer values with scale 1 are clipped without a float round trip (LUNA16's voxels: lossless).
    """
    low, high = check_intensity(window, scale)
    if np.issubdtype(values.dtype, np.integer) and scale == 1.0:
        return np.clip(values, math.ceil(low), math.floor(high)).astype(np.int16, copy=False)
    return np.rint(np.clip(values, low, high) * scale).astype(np.int16)


@dataclass(frozen=True)
class MetaHeader:
    """What luna needs from a MetaImage (``.mhd``) header, parsed once.

    Attributes:
        fields: every ``key = value`` line.
        data_file: the voxel file it names (resolved beside the header), or None for data inside
            the header (``LOCAL``) or spread over several files (``LIST``, a pattern).
        compressed: ``CompressedData = True`` (the voxel file is a zlib stream).
    """

    fields: dict[str, str]
    data_file: Path | None
    compressed: bool

    @classmethod
    def read(cls, mhd_path: Path) -> MetaHeader:
        fields = {}
        for line in mhd_path.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
        name = fields.get("ElementDataFile", "")
        data_file = None if name in ("", "LOCAL", "LIST") or "%" in name else mhd_path.parent / name
        return cls(fields, data_file, fields.get("CompressedData", "False").lower() == "true")

    def geometry_problem(self) -> str | None:
        """Why the header's own origin, spacing or direction cannot place its voxels (checked
        before SimpleITK reads them: it rejects some with a bare number, and accepts others)."""

        def numbers(*keys: str) -> list[float] | None:
            text = next((self.fields[key] for key in keys if key in self.fields), None)
            try:
                return None if text is None else [float(value) for value in text.split()]
            except ValueError:
                return [float("nan")]

        origin = numbers("Offset", "Origin", "Position") or [0.0] * 3
        spacing = numbers("ElementSpacing") or [1.0] * 3
        direction = numbers("TransformMatrix", "Rotation", "Orientation") or np.eye(3).ravel().tolist()
        if len(direction) != 9:
            return None  # not a 3D header: SimpleITK says so when it reads it
        return _geometry_problem(origin, spacing, direction)


def _meta_problem(mhd_path: Path) -> str | None:
    """For a MetaImage header: why its voxel file does not hold exactly the voxels the header says
    (missing, of the wrong size, or compressed data that is damaged or not compressed at all)."""
    header = MetaHeader.read(mhd_path)
    problem = header.geometry_problem()
    if problem:
        return problem
    data = header.data_file
    if data is None:
        return None  # data inside the header or over several files: SimpleITK checks them as it reads
    if data.resolve().parent != mhd_path.resolve().parent:
        log.warning(
            "the header %s reads its voxels from %s, outside its own folder", mhd_path, data.resolve()
        )
    if not data.is_file():
        return f"its voxel file {data} does not exist"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(mhd_path))
    reader.ReadImageInformation()
    one_voxel = sitk.Image(
        [1] * reader.GetDimension(), reader.GetPixelID()
    )  # its numpy dtype gives the value size
    bytes_per_value = sitk.GetArrayViewFromImage(one_voxel).dtype.itemsize
    voxels = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * bytes_per_value
    shape = f"DimSize {' '.join(map(str, reader.GetSize()))}, {header.fields.get('ElementType', '?')}"
    if header.compressed:
        return _zlib_problem(data, voxels, shape)
    header_size = int(header.fields.get("HeaderSize", "0") or 0)
    actual = data.stat().st_size
    if header_size >= 0 and actual != voxels + max(header_size, 0):
        needed = voxels + header_size
        return f"its voxel file {data.name} holds {actual:,} bytes but the header ({shape}) needs {needed:,}"
    return None


def _zlib_problem(data: Path, expected: int, shape: str) -> str | None:
    """Why a zlib-compressed voxel file does not decompress to exactly ``expected`` bytes (its own
    Adler-32 check included); SimpleITK only prints such failures and returns a volume anyway."""
    inflater, produced = zlib.decompressobj(), 0
    try:
        with data.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                produced += len(inflater.decompress(chunk))
                if inflater.eof:
                    break
            produced += len(inflater.flush())
    except zlib.error as error:
        return f"its compressed voxel file {data.name} is damaged or not compressed (zlib: {error})"
    if not inflater.eof:
        return f"its compressed voxel file {data.name} ends early: {produced:,} of {expected:,} bytes"
    if produced != expected:
        return (
            f"its compressed voxel file {data.name} holds {produced:,} bytes but the header ({shape}) needs "
            f"{expected:,}"
        )
    return None


def _geometry_problem(
    origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]
) -> str | None:
    """Why a volume's geometry cannot place its voxels (non-finite origin, spacing <= 0, a singular
    direction)."""
    if not np.isfinite(origin).all():
        return f"its origin {list(origin)} is not finite"
    if not (np.isfinite(spacing).all() and (np.asarray(spacing) > 0).all()):
        return f"its spacing {list(spacing)} is not positive and finite"
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-6:
        return f"its direction (TransformMatrix) {matrix.ravel().tolist()} is not a rotation"
    return None


def _read_image(path: Path) -> sitk.Image:
    """A file SimpleITK reads, or the DICOM series in a folder."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ScanReadError(f"{path} is a folder without a DICOM series")
        if len(series) > 1:
            raise ScanReadError(f"{path} holds {len(series)} DICOM series; point at a folder with one")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    return sitk.ReadImage(str(path))


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels lie: shape (I, R, C), origin, spacing and direction (SimpleITK's)."""

    shape_irc: tuple[int, int, int]
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray

    @classmethod
    def read(cls, path: str | Path) -> Geometry:
        """The geometry of a volume file (its header only) or of a DICOM series folder (read whole).

        Raises:
            RuntimeError: SimpleITK cannot read it.
        """
        path = Path(path)
        if path.is_dir():
            image = _read_image(path)
            size, origin, spacing, direction = (
                image.GetSize(),
                image.GetOrigin(),
                image.GetSpacing(),
                image.GetDirection(),
            )
        else:
            problem = MetaHeader.read(path).geometry_problem() if path.suffix.lower() == ".mhd" else None
            if problem:
                raise RuntimeError(problem)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size, origin, spacing, direction = (
                reader.GetSize(),
                reader.GetOrigin(),
                reader.GetSpacing(),
                reader.GetDirection(),
            )
        if len(size) != 3:
            raise RuntimeError(f"a 3D volume is needed, this one is {len(size)}D")
        problem = _geometry_problem(origin, spacing, direction)
        if problem:
            raise RuntimeError(problem)
        return cls(tuple(size[::-1]), np.array(origin), np.array(spacing), np.array(direction).reshape(3, 3))

    def inside(self, centers_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest voxel of each centre ``[n, 3]`` (IRC) and whether it lies in the volume."""
        irc = xyz_to_irc_many(centers_xyz, self.origin_xyz, self.spacing_xyz, self.direction)
        return irc, ((irc >= 0) & (irc < np.array(self.shape_irc))).all(axis=1)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D volume as int16 (CT: Hounsfield units clipped to [-1000, 1000]) with its geometry.

    Attributes:
        name: the file's stem (LUNA16: the series uid).
        voxels: array of shape (I, R, C): int16 as stored (``read``), or the file's own values
            (``read(..., window=None)``: for resampling, which clips after interpolating).
        origin_xyz: position of voxel (0, 0, 0) in millimetres.
        spacing_xyz: voxel size in millimetres along x, y, z.
        direction: 3x3 direction cosines (columns are the x, y, z index axes in patient space).
    """

    name: str
    voxels: np.ndarray
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray

    @classmethod
    def read(cls, path: str | Path, window: Sequence[float] | None = HU_WINDOW, scale: float = 1.0) -> Volume:
        """Read a volume: ``.mhd/.raw``, ``.nii(.gz)``, ``.nrrd``, ``.mha`` or a DICOM series folder.

        Voxels become ``round(clip(value, window) * scale)`` as int16 (``stored_values``); with
        ``window=None`` they keep the file's values and type.

        Raises:
            ScanReadError: naming the file, when it is missing, truncated, not 3D, has a header
                that disagrees with its voxel file, or holds NaN or infinite voxels.
        """
        path = Path(path)
        name = (
            path.name.removesuffix(".gz").removesuffix(".nii") if path.name.endswith(".nii.gz") else path.stem
        )
        try:
            if path.suffix.lower() == ".mhd" and path.is_file():
                problem = _meta_problem(path)
                if problem:
                    raise ScanReadError(f"cannot read scan {name} ({path}): {problem}")
            image = _read_image(path)
            problem = _geometry_problem(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
            if problem:
                raise ScanReadError(f"cannot read scan {name} ({path}): {problem}")
        except RuntimeError as error:
            if isinstance(error, ScanReadError):
                raise
            reason = str(error).strip().splitlines()
            detail = next((line for line in reversed(reason) if line.strip()), "unreadable")
            if not path.exists():
                detail = "the file does not exist"
            raise ScanReadError(f"cannot read scan {name} ({path}): {detail}") from None
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ScanReadError(
                f"scan {name} ({path}) is not a single-channel 3D image "
                f"({image.GetDimension()}D, {image.GetNumberOfComponentsPerPixel()} components)"
            )
        values = sitk.GetArrayViewFromImage(image)  # no copy: clipping below makes the one copy we keep
        if not np.issubdtype(values.dtype, np.integer):
            finite = np.isfinite(values)
            if not finite.all():
                bad = int((~finite).sum())
                raise ScanReadError(f"scan {name} ({path}) has {bad:,} voxels that are NaN or infinite")
        stored = np.array(values) if window is None else stored_values(values, window, scale)
        return cls(
            name=name,
            voxels=stored,
            origin_xyz=np.array(image.GetOrigin(), dtype=np.float64),
            spacing_xyz=np.array(image.GetSpacing(), dtype=np.float64),
            direction=np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        )

    def xyz_to_irc(self, center_xyz: Sequence[float]) -> tuple[int, int, int]:
        """Millimetres to the nearest voxel index of this volume."""
        return xyz_to_irc(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def irc_to_xyz(self, center_irc: Sequence[float]) -> tuple[float, float, float]:
        """Voxel index of this volume to millimetres."""
        return irc_to_xyz(center_irc, self.origin_xyz, self.spacing_xyz, self.direction)
