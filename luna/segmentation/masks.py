"""A nodule's mask from its annotation: the voxels within its radius, in millimetres, that are dense.

LUNA16 annotates a nodule by its centre and diameter, not by its voxels. The book's
``buildAnnotationMask`` grows a box from the centre while the voxels stay above -700 HU. Here the
mask is a ball of the annotated diameter in physical space (so it has the same millimetres
whatever the grid: anisotropic, resampled, or with a rotated direction), intersected with the
same density threshold, which keeps the nodule's tissue and drops the lung air its ball takes in.
A nodule too small to hold one voxel above the threshold keeps the voxel at its centre.
"""

from __future__ import annotations

import numpy as np

from luna.data.volume import Geometry

NODULE_THRESHOLD_HU = -700.0  # the book's: nodule tissue above it, lung parenchyma below


def ball_mask(
    geometry: Geometry,
    centers_xyz: np.ndarray,
    diameters_mm: np.ndarray,
    values: np.ndarray | None = None,
    threshold: float | None = NODULE_THRESHOLD_HU,
) -> np.ndarray:
    """uint8 ``[I, R, C]`` on ``geometry``'s grid: 1 where a voxel's centre lies strictly within a
    finding's radius (``diameter / 2`` millimetres) and, given ``values`` and ``threshold``, its value
    is above the threshold; each finding inside the grid keeps at least its nearest voxel.

    Args:
        geometry: the grid (shape, origin, spacing, direction).
        centers_xyz: ``[n, 3]`` the findings' centres in millimetres.
        diameters_mm: ``[n]`` their diameters.
        values: ``[I, R, C]`` the voxels (same units as ``threshold``), or None for balls alone.
        threshold: the density a nodule voxel exceeds; None: balls alone.
    """
    shape = np.asarray(geometry.shape_irc)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    inverse = np.linalg.inv(geometry.direction)
    for center, diameter in zip(
        np.asarray(centers_xyz, float).reshape(-1, 3), np.asarray(diameters_mm, float), strict=True
    ):
        radius = diameter / 2
        center_cri = inverse @ (center - geometry.origin_xyz) / geometry.spacing_xyz
        half_cri = np.abs(inverse) @ np.full(3, radius) / geometry.spacing_xyz + 1
        low = np.maximum(np.floor(center_cri - half_cri), 0).astype(int)[::-1]
        high = np.minimum(np.ceil(center_cri + half_cri) + 1, shape[::-1]).astype(int)[::-1]
        if (high <= low).any():
            continue  # the ball lies outside the grid
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        i, r, c = np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high, strict=True)), indexing="ij")
        cri = np.stack([c, r, i], axis=-1) * geometry.spacing_xyz  # millimetres along the grid's axes
        offset = cri @ geometry.direction.T + geometry.origin_xyz - center
        inside = (offset**2).sum(-1) < radius**2
        if values is not None and threshold is not None:
            inside &= values[box] > threshold
        mask[box] |= inside
        nearest = np.round(center_cri[::-1]).astype(int)
        if not inside.any() and ((nearest >= 0) & (nearest < shape)).all():
            mask[tuple(nearest)] = 1
    return mask
