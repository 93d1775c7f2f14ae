"""What a segmentation dataset provides: its volumes, and for each the findings or the mask file.

The segmentation core (the volume store, patches, the module) sees only a ``VolumeTable``. A
*source* turns a dataset's own files into it: LUNA16's scans with the nodules of
``annotations.csv`` (``luna.luna16.segmentation``), or a CSV of (image, mask) volume pairs in any
format SimpleITK reads, the image/label convention of MONAI and nnU-Net (``luna.points.pairs``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class VolumeTable:
    """The volumes of a segmentation dataset.

    Attributes:
        image_ids: one id per volume (LUNA16: the series uid).
        image_paths: each volume's file (or DICOM series folder).
        groups: each volume's split group (LUNA16: the series; a patient when several volumes share one).
        folds: each volume's fold (LUNA16: its subset number), -1 for none.
        mask_paths: each volume's mask file (a label volume: nonzero is foreground), or None when
            its mask is drawn from its findings.
        findings: per volume, ``[n, 4]`` float64 rows of (x, y, z, diameter) in millimetres: the
            objects whose recall is measured (LUNA16: its annotated nodules). For volumes with a
            mask file, an empty array: the store finds them as the mask's connected components.
    """

    image_ids: list[str]
    image_paths: list[Path]
    groups: list[str]
    folds: np.ndarray
    mask_paths: list[Path | None]
    findings: list[np.ndarray]

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        sizes = {
            len(self.image_paths),
            len(self.groups),
            len(self.folds),
            len(self.mask_paths),
            len(self.findings),
        }
        if sizes != {n}:
            raise ValueError(
                "image_ids, image_paths, groups, folds, mask_paths and findings need one entry per volume"
            )
        if any(np.asarray(f).reshape(-1, 4).shape[0] != len(f) for f in self.findings):
            raise ValueError("each volume's findings are rows of (x, y, z, diameter)")

    def __len__(self) -> int:
        return len(self.image_ids)


class VolumeSource(ABC):
    """Turns a dataset's files into a ``VolumeTable``: the one class a segmentation dataset needs.

    ``fingerprint`` and ``image_files`` must be cheap: they decide at every start whether the
    volume store built for this source can be reused.
    """

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of everything the table is made from except the volumes (CSV bytes, settings)."""

    @abstractmethod
    def image_files(self) -> list[Path]:
        """The volumes and mask files the table refers to (their identity is part of the store's key)."""

    @abstractmethod
    def table(self) -> VolumeTable:
        """The volumes; errors name the file, the line and the column."""

    def id_column(self) -> str:
        """What a volume's id is called in a detections file (LUNA16: ``seriesuid``)."""
        return "image"

    def describe(self) -> str:
        """One line for logs."""
        return type(self).__name__
