"""Moving a volume onto another grid: the stored grid of the segmentation (a fixed spacing over the
scan's own extent, origin and direction), by SimpleITK's resampler. The volume store and
``luna.detect`` (and an exported bundle) prepare scans with these same two functions."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from luna.data.volume import Geometry


def resampled_grid(geometry: Geometry, spacing_mm: tuple[float, float, float]) -> Geometry:
    """The grid of ``spacing_mm`` (I, R, C) over the same extent, origin and direction."""
    spacing_xyz = np.asarray(spacing_mm[::-1], dtype=np.float64)
    shape_xyz = np.asarray(geometry.shape_irc[::-1]) * geometry.spacing_xyz / spacing_xyz
    size_xyz = np.maximum(np.round(shape_xyz).astype(int), 1)
    return Geometry(
        tuple(int(n) for n in size_xyz[::-1]), geometry.origin_xyz, spacing_xyz, geometry.direction
    )


def resample(
    values: np.ndarray, geometry: Geometry, target: Geometry, nearest: bool = False, fill: float = 0.0
) -> np.ndarray:
    """``values`` on ``geometry`` interpolated onto the ``target`` grid (SimpleITK: linear, or
    nearest neighbour for labels); points outside the volume get ``fill``."""
    image = sitk.GetImageFromArray(values if nearest else values.astype(np.float32, copy=False))
    image.SetOrigin(geometry.origin_xyz.tolist())
    image.SetSpacing(geometry.spacing_xyz.tolist())
    image.SetDirection(geometry.direction.ravel().tolist())
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(target.origin_xyz.tolist())
    resampler.SetOutputSpacing(target.spacing_xyz.tolist())
    resampler.SetOutputDirection(target.direction.ravel().tolist())
    resampler.SetSize([int(n) for n in target.shape_irc[::-1]])
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    resampler.SetDefaultPixelValue(fill)
    return sitk.GetArrayFromImage(resampler.Execute(image))
