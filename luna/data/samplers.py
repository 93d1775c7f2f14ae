"""Samplers of the crop datasets, and the training loader that makes a run resumable.

Samplers subclass ``DistributedSampler`` so that Lightning uses them as they are under DDP
instead of wrapping them in its own: its default pads the validation set with repeated samples,
which quietly skews DDP metrics. Here each rank takes a disjoint share and nothing is repeated.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from luna.data.dataset import CropBatch, CropDataset
from luna.data.splits import epoch_order


class ResumableSampler(DistributedSampler):
    """A training epoch as a global order split into disjoint per-rank shares, resumable mid-epoch.

    All ranks compute the same global order (``global_order``, from ``(seed, epoch)``) and rank
    ``r`` takes every ``world_size``-th item from ``r``; the order is cut to a multiple of the world
    size so every rank runs the same number of steps. ``set_epoch`` (called by Lightning) moves on.

    Resuming: ``resume_at(epoch, samples_done)`` makes the next pass go on where a checkpoint left
    off (the rest of that epoch, or the next epoch when it was finished), so that a stopped and
    resumed run sees exactly the order of an uninterrupted one. ``ResumableLoader`` calls it from
    the state Lightning keeps in the checkpoint; the sampler never reads the trainer.
    """

    def __init__(
        self, dataset, samples_per_epoch: int, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.num_samples = samples_per_epoch // num_replicas
        if self.num_samples == 0:
            raise ValueError(
                f"an epoch of {samples_per_epoch} samples cannot be shared by {num_replicas} processes"
            )
        self.total_size = self.num_samples * num_replicas
        self._skip_next = 0
        self.pass_epoch, self.pass_start = 0, 0  # the epoch of the latest pass and the samples it skipped

    def global_order(self) -> np.ndarray:
        """This epoch's order over all ranks: ``total_size`` items for the dataset."""
        raise NotImplementedError

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Make the next pass continue a checkpointed one: epoch ``epoch`` after ``samples_done`` of
        this rank's samples, or the start of the next epoch when that one was complete."""
        if not 0 <= samples_done <= self.num_samples:
            raise ValueError(
                f"samples_done={samples_done}: an epoch has {self.num_samples} samples per process "
                "here; the checkpoint was written with another samples_per_epoch or number of processes"
            )
        finished = samples_done == self.num_samples
        self.set_epoch(epoch + 1 if finished else epoch)
        self._skip_next = 0 if finished else samples_done

    def __iter__(self) -> Iterator[int]:
        self.pass_epoch, self.pass_start, self._skip_next = self.epoch, self._skip_next, 0
        return iter(self.global_order()[self.rank :: self.num_replicas][self.pass_start :].tolist())

    def __len__(self) -> int:
        return self.num_samples  # the whole epoch, also when a resumed pass starts part-way


class TrainingSampler(ResumableSampler):
    """The crops of one training epoch, shuffled and optionally balanced (``epoch_order``)."""

    def __init__(
        self,
        dataset: CropDataset,
        negatives_per_positive: int = 0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(dataset, samples_per_epoch or len(dataset), seed, num_replicas, rank)
        self.labels = dataset.labels
        self.negatives_per_positive = negatives_per_positive

    def global_order(self) -> np.ndarray:
        """This epoch's order over all ranks (positions into the dataset)."""
        return epoch_order(self.labels, self.negatives_per_positive, self.total_size, self.seed, self.epoch)


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose place in its epoch is saved in checkpoints.

    Lightning saves ``state_dict()`` of a stateful training loader in every checkpoint and gives
    it back through ``load_state_dict`` before the resumed run's first pass: the epoch and the
    samples of it this process has trained on (batches handed to the loop, which never prefetches
    from a loader of known length). Loader workers may have read further ahead; that does not count.
    """

    sampler: ResumableSampler

    def __init__(self, dataset, sampler: ResumableSampler, **kwargs) -> None:
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
