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


class CropSample(TypedDict):
    """One sample of a ``CropDataset`` (numpy values; ``collate_crops`` makes a ``CropBatch``)."""

    crop: np.ndarray  # int16 [I, R, C], a read-only view of the cache
    label: int
    index: int  # the candidate's row in the cache
    series: int  # the candidate's series (scan) number in the cache
    center_xyz: np.ndarray  # float64 [3], millimetres
    offset_irc: np.ndarray  # int64 [3], the candidate's voxel inside ``crop``
    window_irc: np.ndarray  # int64 [3], start of the model's crop inside ``crop`` (0 when served exactly)


class CropBatch(TypedDict):
    """A batch as the DataLoader yields it; the module turns ``crop`` into float32 on the device."""

    crop: torch.Tensor  # int16 [B, 1, I, R, C]
    label: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B]
    series: torch.Tensor  # int64 [B]
    center_xyz: torch.Tensor  # float64 [B, 3]
    offset_irc: torch.Tensor  # int64 [B, 3]
    window_irc: torch.Tensor  # int64 [B, 3]


class CropDataset(Dataset):
    """The crops at ``positions`` (cache order) of a crop cache.

    Args:
        cache: an open crop cache.
        positions: the crops served, as cache rows.
        width_irc: the crop the model sees; None is the cache's width.
        serve_context: serve the cache's whole (context) crop with ``window_irc`` saying where the
            model's crop lies inside it (for augmentation that needs the voxels around it);
            otherwise serve exactly the model's crop, cut by the reference rule.

    Only ``positions`` and the model windows (int16) are held here; everything else is read per
    sample from the cache's memory-mapped columns, so a dataset pickles small for spawned workers.
    """

    def __init__(self, cache: CropCache, positions: Sequence[int], width_irc: Sequence[int] | None = None,
                 serve_context: bool = False) -> None:
        self.cache = cache
        positions = np.asarray(positions, dtype=np.int64)
        self.positions = positions.astype(np.int32) if len(cache) < 2**31 else positions
        self.width_irc = tuple(width_irc or cache.width_irc)
        offset = np.asarray(cache.offset_irc[positions], dtype=np.int64).reshape(-1, 3)
        window = crop_starts(offset, self.width_irc, cache.width_irc).astype(np.int16)
        self.serve_context = serve_context or self.width_irc == cache.width_irc
        self.window_irc = window
        self._labels: np.ndarray | None = None
        self._columns: tuple[np.ndarray, ...] | None = None

    @property
    def labels(self) -> np.ndarray:
        """The class of every sample (computed in the process that asks: samplers, not workers)."""
        if self._labels is None:
            self._labels = np.asarray(self.cache.labels[self.positions], dtype=np.int64)
        return self._labels

    @property
    def series(self) -> np.ndarray:
        """The image (LUNA16: series) number of every sample."""
        return np.asarray(self.cache.image_of[self.positions], dtype=np.int64)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_labels": None, "_columns": None}

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> CropSample:
        if self._columns is None:  # per process: views of the cache's shared columns
            cache = self.cache
            self._columns = (cache.labels, cache.image_of, cache.center_xyz, cache.offset_irc)
        labels, image_of, center_xyz, offset_irc = self._columns
        k = int(self.positions[item])
        crop = self.cache.crop(k)
        offset, window = offset_irc[k].astype(np.int64), self.window_irc[item].astype(np.int64)
        if not self.serve_context:
            (i, r, c), (wi, wr, wc) = window.tolist(), self.width_irc
            crop = crop[i : i + wi, r : r + wr, c : c + wc]
            offset, window = offset - window, np.zeros(3, dtype=np.int64)
        return {
            "crop": crop,
            "label": int(labels[k]),
            "index": k,
            "series": int(image_of[k]),
            "center_xyz": center_xyz[k],
            "offset_irc": offset,
            "window_irc": window,
        }


def collate_crops(samples: list[CropSample]) -> CropBatch:
    """Stack samples into a ``CropBatch``: int16 crops ``[B, 1, I, R, C]`` (one copy), the rest as tensors."""
    crops = np.empty((len(samples), 1, *samples[0]["crop"].shape), dtype=np.int16)
    for row, sample in enumerate(samples):
        crops[row, 0] = sample["crop"]
    return {
        "crop": torch.from_numpy(crops),
        "label": torch.tensor([sample["label"] for sample in samples], dtype=torch.int64),
        "index": torch.tensor([sample["index"] for sample in samples], dtype=torch.int64),
        "series": torch.tensor([sample["series"] for sample in samples], dtype=torch.int64),
        "center_xyz": torch.from_numpy(np.stack([sample["center_xyz"] for sample in samples]).astype(np.float64)),
        "offset_irc": torch.from_numpy(np.stack([sample["offset_irc"] for sample in samples]).astype(np.int64)),
        "window_irc": torch.from_numpy(np.stack([sample["window_irc"] for sample in samples]).astype(np.int64)),
    }
