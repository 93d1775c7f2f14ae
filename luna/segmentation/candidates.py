"""Candidates from a segmentation: connected components of the thresholded probability map, each
with its centre of mass in millimetres (the book's ``groupSegmentationOutput``), and the recall of
annotated nodules that a set of candidates achieves.

Components and their centres are SimpleITK's (``ConnectedComponentImageFilter``,
``LabelIntensityStatisticsImageFilter``): the centre of mass weighted by the probability, in the
scan's physical frame, so that it is right for any spacing and direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from luna.data.volume import Geometry


@dataclass(frozen=True)
class Candidates:
    """Components of a segmentation, one row each.

    Attributes:
        center_xyz: ``[n, 3]`` the probability-weighted centre of mass in millimetres.
        probability: ``[n]`` the highest probability inside the component.
        volume_mm3: ``[n]`` the component's volume.
    """

    center_xyz: np.ndarray
    probability: np.ndarray
    volume_mm3: np.ndarray

    def __len__(self) -> int:
        return len(self.probability)

    @property
    def diameter_mm(self) -> np.ndarray:
        """The diameter of a ball of each component's volume."""
        return np.cbrt(6 * self.volume_mm3 / math.pi)

    def take(self, rows: np.ndarray) -> Candidates:
        """The candidates at ``rows`` (indices or a boolean mask), in that order."""
        return Candidates(self.center_xyz[rows], self.probability[rows], self.volume_mm3[rows])

    def most_probable(self, count: int) -> Candidates:
        """The ``count`` candidates of highest probability (the larger first among equals), in
        their original order."""
        if len(self) <= count:
            return self
        order = np.lexsort((-self.volume_mm3, -self.probability))
        return self.take(np.sort(order[:count]))


def _image(values: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetOrigin(geometry.origin_xyz.tolist())
    image.SetSpacing(geometry.spacing_xyz.tolist())
    image.SetDirection(geometry.direction.ravel().tolist())
    return image


def group_components(
    probability: np.ndarray,
    geometry: Geometry,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    split_mm: float | None = 1.0,
) -> Candidates:
    """The connected components (26-connected) of ``probability > threshold`` on ``geometry``'s grid.

    Args:
        probability: ``[I, R, C]`` float, a voxel's probability of belonging to a nodule (or a
            binary mask: its components, each centre unweighted).
        geometry: the grid the map lies on.
        threshold: voxels strictly above it form the components.
        min_volume_mm3: components smaller than this are dropped (0: none is).
        split_mm: touching blobs are split along the neck between them (a watershed of the
            distance to the component's edge, from the centres that stand this many millimetres
            above the neck): two nodules that touch, or a nodule touching a vessel, would otherwise
            be one candidate with its centre between them, hitting neither. None: no split.
    """
    binary = (probability > threshold).astype(np.uint8)
    empty = Candidates(np.empty((0, 3)), np.empty(0), np.empty(0))
    if not binary.any():
        return empty
    mask = _image(binary, geometry)
    labels = sitk.ConnectedComponent(mask, True) if split_mm is None else _split(mask, split_mm)
    statistics = sitk.LabelIntensityStatisticsImageFilter()
    statistics.Execute(labels, _image(np.asarray(probability, dtype=np.float32), geometry))
    found = statistics.GetLabels()
    volume = np.array([statistics.GetPhysicalSize(label) for label in found])
    keep = volume >= min_volume_mm3
    if not keep.any():
        return empty
    found = [label for label, kept in zip(found, keep, strict=True) if kept]
    return Candidates(
        center_xyz=np.array([statistics.GetCenterOfGravity(label) for label in found], dtype=np.float64),
        probability=np.array([statistics.GetMaximum(label) for label in found], dtype=np.float64),
        volume_mm3=volume[keep],
    )


def _split(mask: sitk.Image, height_mm: float) -> sitk.Image:
    """Labels of ``mask`` with touching blobs apart: markers at the maxima of the distance to the
    edge that stand ``height_mm`` above their surroundings, grown back over the mask by a watershed."""
    distance = sitk.SignedMaurerDistanceMap(
        mask, insideIsPositive=True, squaredDistance=False, useImageSpacing=True
    )
    markers = sitk.ConnectedComponent(
        sitk.RegionalMaxima(sitk.HMaxima(distance, height_mm), fullyConnected=True), True
    )
    grown = sitk.MorphologicalWatershedFromMarkers(
        -distance, markers, markWatershedLine=False, fullyConnected=True
    )
    return sitk.Mask(grown, mask)


def nodules_hit(candidates_xyz: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """Which findings (``[n, 4]`` rows of x, y, z, diameter) some candidate hits: its centre lies
    strictly within the finding's radius, LUNA16's hit rule (10 mm for an unknown diameter)."""
    findings = np.asarray(findings, dtype=np.float64).reshape(-1, 4)
    if not len(findings) or not len(candidates_xyz):
        return np.zeros(len(findings), dtype=bool)
    radius = np.where(findings[:, 3] >= 0, findings[:, 3] / 2, 5.0)
    distance2 = ((np.asarray(candidates_xyz)[None, :, :] - findings[:, None, :3]) ** 2).sum(-1)
    return (distance2 < radius[:, None] ** 2).any(axis=1)
