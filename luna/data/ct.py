"""One CT scan: reading a LUNA16 ``.mhd/.raw`` pair, coordinate conversion and the reference crop.

Coordinates follow LUNA16.md. CSV centres are XYZ millimetres in the patient frame; arrays are
indexed (I, R, C) = (slice, row, column). The conversions are exactly SimpleITK's physical-point
mapping ``xyz = origin + direction @ (cri * spacing)`` and its inverse, so a non-identity direction
matrix is honoured. (The book multiplies by the inverse direction from the right, which agrees with
this only for symmetric direction matrices such as the identity or axis flips.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HU_MIN = -1000
HU_MAX = 1000
DEFAULT_WIDTH_IRC = (32, 48, 48)


class ScanReadError(RuntimeError):
    """A scan that cannot be read (missing or truncated ``.raw``, unreadable header...)."""


class CenterOutsideScanError(ValueError):
    """A candidate centre that maps to a voxel outside its scan."""


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


def crop_starts(center_irc: np.ndarray, width_irc: Sequence[int], shape_irc: Sequence[int]) -> np.ndarray:
    """Start index of the reference crop of each centre ``[n, 3]`` (IRC) in a volume of ``shape_irc``.

    The one crop rule of luna: ``start = center - width // 2`` (the centre voxel sits at index
    ``width // 2`` of the crop, for odd and even widths alike), shifted back inside the volume when
    the crop would leave it (start 0, or end at the last voxel); never padded. For the even widths
    of the book (32, 48, 48) this is its ``round(center - width / 2)``.

    Raises:
        CenterOutsideScanError: a centre is not inside the volume.
        ValueError: the volume is smaller than the crop on some axis.
    """
    center = np.asarray(center_irc, dtype=np.int64).reshape(-1, 3)
    width, shape = np.asarray(width_irc, dtype=np.int64), np.asarray(shape_irc, dtype=np.int64)
    outside = ((center < 0) | (center >= shape)).any(axis=1)
    if outside.any():
        raise CenterOutsideScanError(
            f"centre {tuple(center[outside.argmax()].tolist())} (IRC) lies outside a volume of shape {tuple(shape.tolist())}"
        )
    if (width > shape).any():
        axis = int((width > shape).argmax())
        raise ValueError(f"crop width {tuple(width.tolist())} exceeds the volume shape {tuple(shape.tolist())} on axis {axis}")
    return np.clip(center - width // 2, 0, shape - width)


def crop_start(center_irc: Sequence[int], width_irc: Sequence[int], shape_irc: Sequence[int]) -> tuple[int, ...]:
    """``crop_starts`` of one centre, as a tuple."""
    return tuple(int(start) for start in crop_starts(np.asarray(center_irc), width_irc, shape_irc)[0])


def find_scans(data_dir: str | Path) -> dict[str, Path]:
    """Map each series uid to its ``.mhd`` file under ``data_dir/subset*/``.

    Only ``subset*`` folders are scanned: ``seg-lungs-LUNA16/`` (lung masks with the same names)
    and any other folder are ignored.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: a series uid appears in two subsets.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"expected the LUNA16 folder {data_dir} (subset*/<seriesuid>.mhd, annotations.csv, "
            "candidates.csv), but it does not exist"
        )
    scans: dict[str, Path] = {}
    for mhd_path in sorted(data_dir.glob("subset*/*.mhd")):
        uid = mhd_path.stem
        if uid in scans:
            raise ValueError(f"series {uid} appears twice: {scans[uid]} and {mhd_path}")
        scans[uid] = mhd_path
    return scans


@dataclass(frozen=True, eq=False)
class CtScan:
    """A CT volume in Hounsfield units, clipped to [-1000, 1000] and stored as int16 (lossless).

    Attributes:
        series_uid: the ``.mhd`` file's stem.
        hu: int16 array of shape (I, R, C).
        origin_xyz: position of voxel (0, 0, 0) in millimetres.
        spacing_xyz: voxel size in millimetres along x, y, z.
        direction: 3x3 direction cosines (columns are the x, y, z index axes in patient space).
    """

    series_uid: str
    hu: np.ndarray
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray

    @classmethod
    def read(cls, mhd_path: str | Path) -> CtScan:
        """Read a ``.mhd/.raw`` pair with SimpleITK.

        Raises:
            ScanReadError: naming the scan, when the header or voxel file is missing or truncated.
        """
        mhd_path = Path(mhd_path)
        try:
            image = sitk.ReadImage(str(mhd_path))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()
            detail = next((line for line in reversed(reason) if line.strip()), "unreadable")
            raise ScanReadError(f"cannot read scan {mhd_path.stem} ({mhd_path}): {detail}") from None
        if image.GetDimension() != 3:
            raise ScanReadError(f"scan {mhd_path.stem} ({mhd_path}) is not a 3D image")
        voxels = sitk.GetArrayViewFromImage(image)  # no copy: clipping below makes the one copy we keep
        if not np.issubdtype(voxels.dtype, np.integer):
            voxels = np.rint(voxels)
        hu = np.clip(voxels, HU_MIN, HU_MAX).astype(np.int16, copy=False)
        return cls(
            series_uid=mhd_path.stem,
            hu=hu,
            origin_xyz=np.array(image.GetOrigin(), dtype=np.float64),
            spacing_xyz=np.array(image.GetSpacing(), dtype=np.float64),
            direction=np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        )

    def xyz_to_irc(self, center_xyz: Sequence[float]) -> tuple[int, int, int]:
        """Millimetres to the nearest voxel index of this scan."""
        return xyz_to_irc(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def irc_to_xyz(self, center_irc: Sequence[float]) -> tuple[float, float, float]:
        """Voxel index of this scan to millimetres."""
        return irc_to_xyz(center_irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def crop(
        self, center_xyz: Sequence[float], width_irc: Sequence[int] = DEFAULT_WIDTH_IRC
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The reference crop around a candidate: ``(int16 view of shape width_irc, center_irc)``.

        Raises:
            CenterOutsideScanError: the centre lies outside the scan.
        """
        center_irc = self.xyz_to_irc(center_xyz)
        starts = crop_start(center_irc, width_irc, self.hu.shape)
        window = tuple(slice(start, start + width) for start, width in zip(starts, width_irc))
        return self.hu[window], center_irc
