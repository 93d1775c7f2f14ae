"""Drawing synthetic volumes in millimetres, for the phantom datasets (``luna.luna16.phantom``,
``luna.points.phantom``): balls, tubes and ellipsoids with a soft partial-volume edge, painted into
a float volume on its voxel grid, and a folder written atomically.

Everything is in (I, R, C) voxel indices and millimetres along those axes (``spacing_irc``), so a
shape keeps its size in millimetres whatever the voxel spacing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np


def _box(center: np.ndarray, radius_vox: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    low = np.maximum(np.floor(center - radius_vox - 1), 0).astype(int)
    high = np.minimum(np.ceil(center + radius_vox + 2), shape).astype(int)
    return tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))


def _grid_mm(box: tuple[slice, ...], spacing_irc: np.ndarray) -> list[np.ndarray]:
    return [
        (np.arange(s.start, s.stop, dtype=np.float32) * spacing_irc[axis]).reshape(
            [-1 if k == axis else 1 for k in range(3)]
        )
        for axis, s in enumerate(box)
    ]


def _paint(
    volume: np.ndarray,
    box: tuple[slice, ...],
    distance_mm: np.ndarray,
    radius_mm: float,
    value: float,
    edge_mm: float,
) -> np.ndarray:
    """Blend ``value`` into ``volume[box]`` where ``distance < radius``, with a soft partial-volume edge."""
    alpha = np.clip((radius_mm - distance_mm) / edge_mm + 0.5, 0.0, 1.0)
    region = volume[box]
    region += alpha * (value - region)
    return alpha


def ball(volume, center_irc, radius_mm, value, spacing_irc, edge_mm):
    """Paint a ball of ``radius_mm`` around ``center_irc`` (voxels); returns its partial-volume weights."""
    box = _box(center_irc, radius_mm / spacing_irc, volume.shape)
    z, y, x = _grid_mm(box, spacing_irc)
    cz, cy, cx = center_irc * spacing_irc
    distance = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
    return _paint(volume, box, distance, radius_mm, value, edge_mm)


def tube(volume, start_irc, end_irc, radius_mm, value, spacing_irc, edge_mm):
    """Paint a capsule of ``radius_mm`` from ``start_irc`` to ``end_irc`` (voxels)."""
    box_center = (start_irc + end_irc) / 2
    half_extent = np.abs(end_irc - start_irc) / 2 + radius_mm / spacing_irc
    box = _box(box_center, half_extent, volume.shape)
    z, y, x = _grid_mm(box, spacing_irc)
    a = start_irc * spacing_irc
    ab = end_irc * spacing_irc - a
    t = ((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    distance = np.sqrt(
        (z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (x - a[2] - t * ab[2]) ** 2
    )
    _paint(volume, box, distance, radius_mm, value, edge_mm)


def ellipsoid(volume, center_irc, semi_mm, value, spacing_irc, edge_mm):
    """Paint an axis-aligned ellipsoid with semi-axes ``semi_mm`` (I, R, C) around ``center_irc``."""
    box = _box(center_irc, semi_mm / spacing_irc, volume.shape)
    z, y, x = _grid_mm(box, spacing_irc)
    cz, cy, cx = center_irc * spacing_irc
    scaled = np.sqrt(
        ((z - cz) / semi_mm[0]) ** 2 + ((y - cy) / semi_mm[1]) ** 2 + ((x - cx) / semi_mm[2]) ** 2
    )
    _paint(volume, box, scaled * semi_mm.min(), semi_mm.min(), value, edge_mm)


def spec_digest(spec: object) -> str:
    """A short digest of a phantom spec: its folder name, so another spec never reuses old data."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
