"""Dataset, samplers and collate for crops served from a ``CropCache``.

A sample is a zero-copy int16 view of the cache plus what traces it back to its candidate;
``collate_crops`` converts the whole batch to float32 in one pass (one copy per sample in all).

Samplers subclass ``DistributedSampler`` so that Lightning uses them as they are under DDP
instead of wrapping them in its own: its default pads the validation set with repeated samples,
which quietly skews DDP metrics. Here each rank takes a disjoint share and nothing is repeated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from luna.data.cache import CropCache
from luna.data.splits import epoch_order


class CropDataset(Dataset):
    """The candidates at ``positions`` (cache index order) of a crop cache.

    Items are dicts: ``crop`` (int16 numpy view ``[I, R, C]``), ``label`` (1 = nodule), ``index``
    (position in the cache, see ``CropCache.candidate``), ``series_uid``, ``center_xyz`` (mm) and
    ``offset_irc`` (the candidate's voxel inside the crop; not the middle near a scan's border).
    """

    def __init__(self, cache: CropCache, positions: Sequence[int]) -> None:
        self.cache = cache
        self.positions = np.asarray(positions, dtype=np.int64)
        self.labels = cache.index["is_nodule"][self.positions]
        # Everything a sample carries besides its crop, as plain Python values: building a sample is
        # then a few list lookups, which keeps reads close to the speed of copying the crop itself.
        self._items = list(zip(
            self.positions.tolist(),
            self.labels.astype(int).tolist(),
            [cache.series_uid(k) for k in self.positions.tolist()],
            [tuple(xyz) for xyz in cache.center_xyz[self.positions].tolist()],
            [tuple(irc) for irc in cache.offset_irc[self.positions].tolist()],
        ))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> dict:
        k, label, series_uid, center_xyz, offset_irc = self._items[item]
        return {
            "crop": self.cache.crop(k),
            "label": label,
            "index": k,
            "series_uid": series_uid,
            "center_xyz": center_xyz,
            "offset_irc": offset_irc,
        }


def collate_crops(items: list[dict]) -> dict:
    """Stack samples into a batch: ``crop`` float32 ``[B, 1, I, R, C]``, ``label`` int64 ``[B]``..."""
    crops = np.empty((len(items), 1, *items[0]["crop"].shape), dtype=np.float32)
    for row, item in enumerate(items):
        crops[row, 0] = item["crop"]  # int16 -> float32 conversion and copy in one pass
    return {
        "crop": torch.from_numpy(crops),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.int64),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "series_uid": [item["series_uid"] for item in items],
        "center_xyz": torch.tensor([item["center_xyz"] for item in items], dtype=torch.float64),
        "offset_irc": torch.tensor([item["offset_irc"] for item in items], dtype=torch.int64),
    }


class TrainingSampler(DistributedSampler):
    """One training epoch (shuffled, optionally balanced), split into disjoint per-rank shares.

    All ranks compute the same global order from ``(seed, epoch)`` and rank ``r`` takes every
    ``world_size``-th sample from ``r``; the order is cut to a multiple of the world size so every
    rank runs the same number of steps. ``set_epoch`` (called by Lightning) reshuffles.
    """

    def __init__(
        self,
        dataset: CropDataset,
        negatives_per_positive: int = 0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.labels = dataset.labels
        self.negatives_per_positive = negatives_per_positive
        global_length = samples_per_epoch or len(dataset)
        self.num_samples = global_length // num_replicas
        if self.num_samples == 0:
            raise ValueError(f"an epoch of {global_length} samples cannot be shared by {num_replicas} processes")
        self.total_size = self.num_samples * num_replicas

    def global_order(self) -> np.ndarray:
        """This epoch's order over all ranks (positions into the dataset)."""
        return epoch_order(self.labels, self.negatives_per_positive, self.total_size, self.seed, self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class EvaluationSampler(DistributedSampler):
    """Every sample exactly once, in order, as one contiguous block per rank (no padding).

    Ranks may get one sample more or less than each other; metrics are synchronised by
    torchmetrics at epoch end, so uneven shares are exact where padding would not be.
    """

    def __init__(self, dataset: CropDataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)
        self.start = size * rank // num_replicas
        self.stop = size * (rank + 1) // num_replicas
        self.num_samples = self.stop - self.start
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples
