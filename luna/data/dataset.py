"""Dataset, samplers and collate for crops served from a ``CropCache``.

A sample is a zero-copy int16 view of the cache plus what traces it back to its candidate. Batches
cross to the device as int16 (half the bytes of float32) and become float32 there
(``LunaClassifier.on_after_batch_transfer``), where augmentation runs too.

Everything a dataset holds per candidate is a numpy array, never a Python object per candidate:
DataLoader workers then share those pages with the main process instead of copying them as
reference counts change (worker memory stays flat at LUNA16's 755k candidates), and a dataset
pickles small for spawned workers.

Samplers and the training loader are in ``luna.data.samplers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from luna.data.cache.read import CropCache
from luna.data.crops import crop_starts


class ViewSample(TypedDict):
    """One more view of a sample's candidate (numpy values)."""

    crop: np.ndarray  # int16 [I, R, C], a read-only view of the cache
    offset_irc: np.ndarray  # int64 [3], the candidate's voxel inside ``crop``
    window_irc: np.ndarray  # int64 [3], start of the model's crop inside ``crop`` (0 when served exactly)
    voxel_mm: np.ndarray  # float64 [3], the crop's voxel size along I, R, C


class CropSample(TypedDict):
    """One sample of a ``CropDataset`` (numpy values; ``collate_crops`` makes a ``CropBatch``).

    ``crop``, ``offset_irc``, ``window_irc`` and ``voxel_mm`` describe the first view; the other
    views of the same candidate, when the data has several, are in ``extra_views``.
    """

    crop: np.ndarray  # int16 [I, R, C], a read-only view of the cache
    label: int
    index: int  # the candidate's row in the cache
    image: int  # the candidate's image (LUNA16: series) number in the cache
    center_xyz: np.ndarray  # float64 [3], millimetres
    offset_irc: np.ndarray  # int64 [3], the candidate's voxel inside ``crop``
    window_irc: np.ndarray  # int64 [3], start of the model's crop inside ``crop`` (0 when served exactly)
    voxel_mm: np.ndarray  # float64 [3], the crop's voxel size along I, R, C
    extra_views: list[ViewSample]


class ViewBatch(TypedDict):
    """One more view of every sample of a batch."""

    crop: torch.Tensor  # int16 [B, 1, I, R, C]
    offset_irc: torch.Tensor  # int64 [B, 3]
    window_irc: torch.Tensor  # int64 [B, 3]
    voxel_mm: torch.Tensor  # float64 [B, 3]


class CropBatch(TypedDict):
    """A batch as the DataLoader yields it; the module turns the crops into float32 on the device."""

    crop: torch.Tensor  # int16 [B, 1, I, R, C]
    label: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B]
    image: torch.Tensor  # int64 [B], each candidate's image number in the cache
    center_xyz: torch.Tensor  # float64 [B, 3]
    offset_irc: torch.Tensor  # int64 [B, 3]
    window_irc: torch.Tensor  # int64 [B, 3]
    voxel_mm: torch.Tensor  # float64 [B, 3]
    extra_views: list[ViewBatch]


class CropDataset(Dataset):
    """The crops at ``positions`` (cache order) of a crop cache, one per view of the cache.

    Args:
        cache: an open crop cache.
        positions: the crops served, as cache rows.
        widths_irc: the crop the model sees of each view of the cache; None: the cached sizes.
        serve_context: serve the cache's whole (context) crops with ``window_irc`` saying where the
            model's crop lies inside each (for augmentation that needs the voxels around it);
            otherwise serve exactly the model's crops, cut by the reference rule.

    Only ``positions`` and the model windows (int16) are held here; everything else is read per
    sample from the cache's memory-mapped columns, so a dataset pickles small for spawned workers.
    """

    def __init__(
        self,
        cache: CropCache,
        positions: Sequence[int],
        widths_irc: Sequence[Sequence[int]] | None = None,
        serve_context: bool = False,
    ) -> None:
        self.cache = cache
        positions = np.asarray(positions, dtype=np.int64)
        self.positions = positions.astype(np.int32) if len(cache) < 2**31 else positions
        cached = [view.width_irc for view in cache.views]
        self.widths_irc = [tuple(int(w) for w in width) for width in (widths_irc or cached)]
        if len(self.widths_irc) != len(cached):
            raise ValueError(f"{len(self.widths_irc)} crop widths for a cache of {len(cached)} views")
        self.window_irc = []
        for view, (width, size) in enumerate(zip(self.widths_irc, cached, strict=True)):
            if any(w > c for w, c in zip(width, size, strict=True)):
                raise ValueError(
                    f"the model's crop {list(width)} is larger than the cached crop {list(size)}"
                )
            offset = np.asarray(cache.offset_irc(view)[positions], dtype=np.int64).reshape(-1, 3)
            self.window_irc.append(crop_starts(offset, width, size).astype(np.int16))
        self.serve_context = serve_context or self.widths_irc == cached
        self._labels: np.ndarray | None = None
        self._columns: tuple | None = None

    @property
    def labels(self) -> np.ndarray:
        """The class of every sample (computed in the process that asks: samplers, not workers)."""
        if self._labels is None:
            self._labels = np.asarray(self.cache.labels[self.positions], dtype=np.int64)
        return self._labels

    @property
    def images(self) -> np.ndarray:
        """The image (LUNA16: series) number of every sample."""
        return np.asarray(self.cache.image_of[self.positions], dtype=np.int64)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_labels": None, "_columns": None}

    def __len__(self) -> int:
        return len(self.positions)

    def _view(self, view: int, k: int, item: int, image: int) -> ViewSample:
        cache = self.cache
        crop = cache.crop(k, view)
        offset, window = (
            self._columns[3][view][k].astype(np.int64),
            self.window_irc[view][item].astype(np.int64),
        )
        if not self.serve_context:
            (i, r, c), (wi, wr, wc) = window.tolist(), self.widths_irc[view]
            crop = crop[i : i + wi, r : r + wr, c : c + wc]
            offset, window = offset - window, np.zeros(3, dtype=np.int64)
        spacing = cache.views[view].spacing_mm
        voxel_mm = (
            cache.image_spacing_irc[image] if spacing is None else np.asarray(spacing, dtype=np.float64)
        )
        return {"crop": crop, "offset_irc": offset, "window_irc": window, "voxel_mm": voxel_mm}

    def __getitem__(self, item: int) -> CropSample:
        if self._columns is None:  # per process: views of the cache's shared columns
            cache = self.cache
            self._columns = (
                cache.labels,
                cache.image_of,
                cache.center_xyz,
                [cache.offset_irc(view) for view in range(len(cache.views))],
            )
        labels, image_of, center_xyz, _ = self._columns
        k = int(self.positions[item])
        image = int(image_of[k])
        first = self._view(0, k, item, image)
        return {
            **first,
            "label": int(labels[k]),
            "index": k,
            "image": image,
            "center_xyz": center_xyz[k],
            "extra_views": [self._view(view, k, item, image) for view in range(1, len(self.widths_irc))],
        }


def _stack_crops(crops: list[np.ndarray]) -> torch.Tensor:
    """int16 crops ``[B, 1, I, R, C]`` in one copy."""
    out = np.empty((len(crops), 1, *crops[0].shape), dtype=np.int16)
    for row, crop in enumerate(crops):
        out[row, 0] = crop
    return torch.from_numpy(out)


def _stack(values: list[np.ndarray], dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.stack(values).astype(dtype))


def _collate_view(views: list[ViewSample]) -> ViewBatch:
    return {
        "crop": _stack_crops([view["crop"] for view in views]),
        "offset_irc": _stack([view["offset_irc"] for view in views], np.int64),
        "window_irc": _stack([view["window_irc"] for view in views], np.int64),
        "voxel_mm": _stack([view["voxel_mm"] for view in views], np.float64),
    }


def collate_crops(samples: list[CropSample]) -> CropBatch:
    """Stack samples into a ``CropBatch``: int16 crops ``[B, 1, I, R, C]`` (one copy), the rest as tensors."""
    return {
        **_collate_view(samples),
        "label": torch.tensor([sample["label"] for sample in samples], dtype=torch.int64),
        "index": torch.tensor([sample["index"] for sample in samples], dtype=torch.int64),
        "image": torch.tensor([sample["image"] for sample in samples], dtype=torch.int64),
        "center_xyz": _stack([sample["center_xyz"] for sample in samples], np.float64),
        "extra_views": [
            _collate_view([sample["extra_views"][view] for sample in samples])
            for view in range(len(samples[0]["extra_views"]))
        ],
    }
