"""Dataset, samplers and collate for crops served from a ``CropCache``.

A sample is a zero-copy int16 view of the cache plus what traces it back to its candidate. Batches
cross to the device as int16 (half the bytes of float32) and become float32 there
(``LunaClassifier.on_after_batch_transfer``), where augmentation runs too.

Everything a dataset holds per candidate is a numpy array, never a Python object per candidate:
DataLoader workers then share those pages with the main process instead of copying them as
reference counts change (worker memory stays flat at LUNA16's 755k candidates), and a dataset
pickles small for spawned workers.

Samplers subclass ``DistributedSampler`` so that Lightning uses them as they are under DDP
instead of wrapping them in its own: its default pads the validation set with repeated samples,
which quietly skews DDP metrics. Here each rank takes a disjoint share and nothing is repeated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from luna.data.cache import CropCache
from luna.data.volume import crop_starts
from luna.data.splits import epoch_order


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


class TrainingSampler(DistributedSampler):
    """One training epoch (shuffled, optionally balanced), split into disjoint per-rank shares.

    All ranks compute the same global order from ``(seed, epoch)`` and rank ``r`` takes every
    ``world_size``-th sample from ``r``; the order is cut to a multiple of the world size so every
    rank runs the same number of steps. ``set_epoch`` (called by Lightning) reshuffles.

    Resuming: ``resume_at(epoch, samples_done)`` makes the next pass go on where a checkpoint left
    off (the rest of that epoch, or the next epoch when it was finished), so that a stopped and
    resumed run sees exactly the order of an uninterrupted one. ``ResumableLoader`` calls it from
    the state Lightning keeps in the checkpoint; the sampler never reads the trainer.
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
        self._skip_next = 0
        self.pass_epoch, self.pass_start = 0, 0  # the epoch of the latest pass and the samples it skipped

    def global_order(self) -> np.ndarray:
        """This epoch's order over all ranks (positions into the dataset)."""
        return epoch_order(self.labels, self.negatives_per_positive, self.total_size, self.seed, self.epoch)

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Make the next pass continue a checkpointed one: epoch ``epoch`` after ``samples_done`` of
        this rank's samples, or the start of the next epoch when that one was complete."""
        if not 0 <= samples_done <= self.num_samples:
            raise ValueError(f"samples_done={samples_done}: an epoch has {self.num_samples} samples per process "
                             "here; the checkpoint was written with another samples_per_epoch or number of processes")
        finished = samples_done == self.num_samples
        self.set_epoch(epoch + 1 if finished else epoch)
        self._skip_next = 0 if finished else samples_done

    def __iter__(self) -> Iterator[int]:
        self.pass_epoch, self.pass_start, self._skip_next = self.epoch, self._skip_next, 0
        return iter(self.global_order()[self.rank :: self.num_replicas][self.pass_start :].tolist())

    def __len__(self) -> int:
        return self.num_samples  # the whole epoch, also when a resumed pass starts part-way


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose place in its epoch is saved in checkpoints.

    Lightning saves ``state_dict()`` of a stateful training loader in every checkpoint and gives
    it back through ``load_state_dict`` before the resumed run's first pass: the epoch and the
    samples of it this process has trained on (batches handed to the loop, which never prefetches
    from a loader of known length). Loader workers may have read further ahead; that does not count.
    """

    sampler: TrainingSampler

    def __init__(self, dataset: CropDataset, sampler: TrainingSampler, **kwargs) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._batches_served = 0

    def __iter__(self) -> Iterator[CropBatch]:
        self._batches_served = 0
        for batch in super().__iter__():
            self._batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        done = min(self.sampler.pass_start + self._batches_served * self.batch_size, self.sampler.num_samples)
        return {"epoch": self.sampler.pass_epoch, "samples_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(int(state["epoch"]), int(state["samples_done"]))


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
