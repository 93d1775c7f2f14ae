"""The generic core of luna's data: one table of crop sources, whatever the dataset.

A row is a point to cut a crop around: its image, its world centre in millimetres and its integer
label. Each image belongs to a split group (the scan itself by default; a patient when several
images share one) and optionally to a fold. The cache, the splits, the samplers, the metrics and
the cluster scripts only ever see this table; a *source* (``luna.luna16``,
``luna.points``) turns a dataset's own files into it.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NO_FOLD = -1


@dataclass(frozen=True)
class CropTable:
    """Rows to crop, in the dataset's own order (LUNA16: the reference candidate order).

    Attributes:
        image_ids: one id per image (LUNA16: the series uid); rows refer to images by position.
        image_paths: the volume of each image (any file SimpleITK reads, or a DICOM series folder).
        groups: ``[n_images]`` the split group of each image, as a string (LUNA16: the series uid).
        folds: ``[n_images]`` int, each image's fold (LUNA16: its subset number), ``NO_FOLD`` if none.
        image: ``[n]`` int64, each row's image.
        center_xyz: ``[n, 3]`` float64, each row's centre in millimetres (patient coordinates).
        label: ``[n]`` int64, each row's class, in ``0 .. len(class_names) - 1``.
        class_names: one name per class.
        extra: optional per-row columns kept with the crops (LUNA16: ``diameter_mm``).
    """

    image_ids: list[str]
    image_paths: list[Path]
    groups: list[str]
    folds: np.ndarray
    image: np.ndarray
    center_xyz: np.ndarray
    label: np.ndarray
    class_names: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_images, n_rows = len(self.image_ids), len(self.image)
        if not (len(self.image_paths) == len(self.groups) == len(self.folds) == n_images):
            raise ValueError("image_ids, image_paths, groups and folds must have one entry per image")
        if self.center_xyz.shape != (n_rows, 3) or self.label.shape != (n_rows,):
            raise ValueError(f"center_xyz must be [{n_rows}, 3] and label [{n_rows}]")
        if n_rows and (self.image.min() < 0 or self.image.max() >= n_images):
            raise ValueError("image indices must refer to image_ids")
        if n_rows and (self.label.min() < 0 or self.label.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1} ({self.class_names})")
        if any(column.shape[0] != n_rows for column in self.extra.values()):
            raise ValueError("every extra column needs one value per row")

    def __len__(self) -> int:
        return len(self.image)

    def rows_of_image(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows sorted by image, keeping table order within an image, and each image's start in them."""
        order = np.argsort(self.image, kind="stable")
        counts = np.bincount(self.image, minlength=len(self.image_ids))
        return order, np.concatenate([[0], np.cumsum(counts)])


def file_name_of(image_id: str) -> str:
    """A file name for an image id: the id itself when it is a safe name (LUNA16 uids are), else a
    readable part and a hash (paths of a points CSV contain slashes)."""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,120}", image_id) and not image_id.startswith("."):
        return image_id
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._")[-60:]
    return f"{readable}-{hashlib.sha256(image_id.encode()).hexdigest()[:12]}"


class CropSource(ABC):
    """Turns a dataset's own files into a ``CropTable``: the one class a new dataset needs.

    ``fingerprint`` and ``image_files`` must be cheap (no parsing of the whole table): they decide,
    at every start, whether the crop cache built for this source can be reused without reading
    anything else. ``table`` does the real work, only when a cache is built.
    """

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of everything the table is made from except the images (CSV bytes, settings)."""

    @abstractmethod
    def image_files(self) -> list[Path]:
        """The volumes the table refers to (their identity is part of the cache key)."""

    @abstractmethod
    def table(self) -> CropTable:
        """The rows to crop; errors name the file, the line and the column."""

    @abstractmethod
    def class_names(self) -> list[str]:
        """One name per class, in label order (cheap: the CLI asks for it before any cache exists)."""

    def id_column(self) -> str:
        """What an image id is called in files of predictions (LUNA16: ``seriesuid``)."""
        return "image"

    def describe(self) -> str:
        """One line for logs."""
        return type(self).__name__

    def missing_images_expected(self) -> bool:
        """Whether the table lists images that are not on disk on purpose (a phantom imitating a
        partial download): their rows are then skipped with a note instead of a warning."""
        return False


def hash_files(paths: list[Path], *settings: object) -> str:
    """SHA-256 of the files' bytes (read in chunks) and of ``settings``."""
    digest = hashlib.sha256(repr(settings).encode())
    for path in paths:
        digest.update(b"\0file\0" + path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
