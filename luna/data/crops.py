"""Where a crop lies in its volume: the one crop rule of luna, in voxel indices (pure numpy).

The network, the dataset and the cache all need the crop's geometry; none of them needs to read a
volume to know it, so this module imports neither SimpleITK nor torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_WIDTH_IRC = (32, 48, 48)  # the book's crop (slices, rows, columns): named once, used everywhere


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
            f"centre {tuple(center[outside.argmax()].tolist())} (IRC) lies outside a volume of shape {tuple(shape.tolist())}"
        )
    if (width > shape).any():
        axis = int((width > shape).argmax())
        raise ValueError(f"crop width {tuple(width.tolist())} exceeds the volume shape {tuple(shape.tolist())} on axis {axis}")
    return np.clip(center - width // 2, 0, shape - width)


def crop_start(center_irc: Sequence[int], width_irc: Sequence[int], shape_irc: Sequence[int]) -> tuple[int, ...]:
    """``crop_starts`` of one centre, as a tuple."""
    return tuple(int(start) for start in crop_starts(np.asarray(center_irc), width_irc, shape_irc)[0])
