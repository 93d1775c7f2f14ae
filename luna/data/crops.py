"""What a crop is: its view (width, spacing, context), and the two ways to cut it (pure numpy).

* **Native** (``spacing_mm=None``, the book): ``width_irc`` voxels of the scan's own grid around
  the candidate's nearest voxel, shifted back inside the volume at its borders (``crop_starts``).
  A 32-slice crop covers 20 mm of a 0.625 mm scan and 80 mm of a 2.5 mm one.
* **Physical** (``spacing_mm=[I, R, C]``): ``width_irc`` voxels at that spacing in millimetres,
  on a grid aligned with the scan's own axes and centred exactly on the candidate's millimetre
  position: the candidate lies at voxel ``width // 2`` of every crop, whatever the scan's spacing
  (``resample_crops``). Values come from linear interpolation of the scan's voxels; where the
  crop reaches outside the scan it is filled (CT: with -1000 HU, air), never shifted, so that the
  centre stays exact.

The network, the dataset and the cache all need the crop's geometry; none of them needs to read a
volume to know it, so this module imports neither SimpleITK nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WIDTH_IRC = (
    32,
    48,
    48,
)  # the book's crop (slices, rows, columns), the size its LunaModel is built for


@dataclass(frozen=True)
class View:
    """One crop of each candidate, as the network sees it and as the cache keeps it.

    Args:
        width_irc: the crop the network sees (slices, rows, columns).
        spacing_mm: millimetres between voxels along I, R, C; None: the scan's own voxels (native).
        context_irc: a larger crop cached around it for augmentation (same spacing); None: none.
    """

    width_irc: tuple[int, int, int]
    spacing_mm: tuple[float, float, float] | None = None
    context_irc: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:  # plain tuples: YAML and JSON give lists
        for name in ("width_irc", "spacing_mm", "context_irc"):
            value = getattr(self, name)
            if isinstance(value, (list, np.ndarray)):
                object.__setattr__(
                    self, name, tuple(value.tolist() if isinstance(value, np.ndarray) else value)
                )

    def checked(self, option: str = "") -> View:
        """This view with its values checked and normalised; an error names ``option`` and the field
        (``option="data.extra_views[0]."`` gives ``data.extra_views[0].spacing_mm=...``).

        Raises:
            ValueError: a width that is not three positive voxel counts, a spacing that is not three
                finite positive millimetres, or a context smaller than the width.
        """
        width = check_width(self.width_irc, f"{option}width_irc")
        spacing = None if self.spacing_mm is None else check_spacing(self.spacing_mm, f"{option}spacing_mm")
        context = None
        if self.context_irc is not None:
            context = check_width(self.context_irc, f"{option}context_irc")
            if any(c < w for c, w in zip(context, width, strict=True)):
                raise ValueError(
                    f"{option}context_irc={list(context)} must be at least {option}width_irc="
                    f"{list(width)} on every axis"
                )
        return View(width, spacing, context)

    @property
    def cached_irc(self) -> tuple[int, int, int]:
        """The crop the cache holds: the context when there is one, else the network's crop."""
        return self.context_irc or self.width_irc

    def describe(self) -> str:
        """``32x48x48 voxels at 1.25x0.7x0.7 mm`` or ``32x48x48 native voxels``."""
        size = "x".join(map(str, self.width_irc))
        if self.spacing_mm is None:
            return f"{size} native voxels"
        return f"{size} voxels at {'x'.join(f'{s:g}' for s in self.spacing_mm)} mm"


def check_width(width: Sequence[int], option: str) -> tuple[int, int, int]:
    """Three positive voxel counts, or a ``ValueError`` naming ``option``."""
    values = tuple(width)
    if len(values) != 3 or any(
        isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in values
    ):
        raise ValueError(f"{option}={list(values)}: expected three positive voxel counts (I, R, C)")
    return tuple(int(w) for w in values)


def check_spacing(spacing_mm: Sequence[float], option: str = "spacing_mm") -> tuple[float, float, float]:
    """Three finite, positive millimetre spacings (I, R, C), or a ``ValueError`` naming ``option``."""
    try:
        values = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise ValueError(
            f"{option}={spacing_mm!r}: expected three spacings in millimetres (I, R, C)"
        ) from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"{option}={list(spacing_mm)}: expected three finite, positive spacings in millimetres "
            "(I, R, C), e.g. [1.25, 0.7, 0.7]"
        )
    return values


class CenterOutsideScanError(ValueError):
    """A centre that maps to a voxel outside its volume."""


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
            f"centre {tuple(center[outside.argmax()].tolist())} (IRC) lies outside a volume of shape "
            f"{tuple(shape.tolist())}"
        )
    if (width > shape).any():
        axis = int((width > shape).argmax())
        raise ValueError(
            f"crop width {tuple(width.tolist())} exceeds the volume shape {tuple(shape.tolist())} on axis "
            f"{axis}"
        )
    return np.clip(center - width // 2, 0, shape - width)


def resample_crops(
    values: np.ndarray,
    center_irc: np.ndarray,
    scan_spacing_irc: Sequence[float],
    width_irc: Sequence[int],
    spacing_irc: Sequence[float],
    fill: float,
) -> np.ndarray:
    """Physical-space crops ``float32 [n, *width_irc]`` of a volume, by linear interpolation.

    Args:
        values: the volume ``[I, R, C]`` (raw values: clip after interpolating, not before).
        center_irc: ``[n, 3]`` each crop's centre as a continuous voxel index of the volume (not
            rounded); it lands on voxel ``width // 2`` of its crop.
        scan_spacing_irc: the volume's voxel size along I, R, C in millimetres.
        width_irc: the crop's voxels along I, R, C.
        spacing_irc: the crop's voxel size along I, R, C in millimetres.
        fill: the value of every point outside the volume (CT: -1000 HU, air).

    The volume covers its voxels' extent, half a voxel beyond the outer voxel centres; within that
    half voxel the outer voxel's value holds, beyond it ``fill`` (SimpleITK's linear
    interpolator does the same). The crop's axes are the volume's own index axes, so trilinear
    interpolation separates into a linear interpolation along each axis in turn: each crop reads
    only the block of the volume under it, in a few passes.
    """
    center = np.asarray(center_irc, dtype=np.float64).reshape(-1, 3)
    width = [int(w) for w in width_irc]
    step = np.asarray(spacing_irc, dtype=np.float64) / np.asarray(scan_spacing_irc, dtype=np.float64)
    crops = np.empty((len(center), *width), dtype=np.float32)
    for n, point in enumerate(center):
        axes = [
            _axis_samples(point[axis] + (np.arange(width[axis]) - width[axis] // 2) * step[axis], size)
            for axis, size in enumerate(values.shape)
        ]
        block = np.asarray(
            values[tuple(slice(low.min(), high.max() + 1) for low, high, _, _ in axes)], np.float32
        )
        for axis, (low, high, weight, _) in enumerate(axes):
            start = low.min()
            below, above = np.take(block, low - start, axis=axis), np.take(block, high - start, axis=axis)
            block = below + (above - below) * weight.reshape([-1 if k == axis else 1 for k in range(3)])
        outside = axes[0][3][:, None, None] | axes[1][3][None, :, None] | axes[2][3][None, None, :]
        block[outside] = fill
        crops[n] = block
    return crops


def _axis_samples(position: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For positions along an axis of ``size`` voxels: the voxels below and above, the weight of
    the one above, and which positions lie outside the volume's extent."""
    outside = (position < -0.5) | (position > size - 0.5)
    clamped = np.clip(position, 0, size - 1)
    low = np.minimum(np.floor(clamped).astype(np.int64), max(size - 2, 0))
    high = np.minimum(low + 1, size - 1)
    return low, high, (clamped - low).astype(np.float32), outside
