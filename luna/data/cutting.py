"""Cutting the crops of one view from a volume: the native rule or physical resampling, then storage.

The cache builder cuts every crop with this function, and the cache reader cuts a damaged crop
again with it, so a crop is the same bytes whichever cut it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from luna.data.crops import View, crop_starts, resample_crops
from luna.data.volume import Volume, stored_values, xyz_to_continuous_irc


def cut_crops(
    volume: Volume, centers_xyz: np.ndarray, view: View, window: Sequence[float], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The cached crops of ``view`` around centres that lie inside ``volume``.

    Args:
        volume: read with ``window=None`` (the file's own values): native crops are clipped after
            cutting, physical ones after interpolating.
        centers_xyz: ``[n, 3]`` millimetres, each inside the volume (its nearest voxel is).
        view: the crop's width (its context, when it has one) and spacing.
        window, scale: the stored values, ``round(clip(value, window) * scale)`` as int16.

    Returns:
        ``(crops, offset_irc)``: int16 ``[n, *view.cached_irc]``, and each centre's voxel inside
        its crop ``[n, 3]`` (native crops near a border are shifted inside, so not always the middle).

    Raises:
        ValueError: a native crop is wider than the volume on some axis.
    """
    size = view.cached_irc
    continuous = xyz_to_continuous_irc(centers_xyz, volume.origin_xyz, volume.spacing_xyz, volume.direction)
    if view.spacing_mm is None:
        center_irc = np.round(continuous).astype(np.int64)
        starts = crop_starts(center_irc, size, volume.voxels.shape)
        crops = np.empty((len(starts), *size), dtype=np.int16)
        for row, (i, r, c) in enumerate(starts.tolist()):
            crops[row] = stored_values(
                volume.voxels[i : i + size[0], r : r + size[1], c : c + size[2]], window, scale
            )
        return crops, center_irc - starts
    values = resample_crops(
        volume.voxels, continuous, volume.spacing_xyz[::-1], size, view.spacing_mm, fill=float(window[0])
    )
    offset = np.tile(np.array(size, dtype=np.int64) // 2, (len(centers_xyz), 1))
    return stored_values(values, window, scale), offset
