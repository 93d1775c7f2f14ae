"""DataLoaders as every luna DataModule makes them: no more workers than the process has CPUs,
pinned memory on a GPU, workers seeded from their own generator, and the process's rank."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)
_said: set[int] = set()  # worker counts already said to be more than the CPUs


def world_of(trainer: pl.Trainer | None) -> tuple[int, int]:
    """``(world size, global rank)`` of the trainer's run; one process without a trainer."""
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def usable_workers(requested: int) -> int:
    """``requested`` loader workers, at most the CPUs this process may use (said once when fewer)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cpus and requested not in _said:
        log.info(
            "num_workers=%d, but this machine gives the process %d CPUs: using %d loader workers",
            requested,
            cpus,
            cpus,
        )
        _said.add(requested)
    return min(requested, cpus)


def make_loader(
    trainer: pl.Trainer | None,
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    num_workers: int,
    collate: Callable | None,
    seed: int,
    kind: type[DataLoader] = DataLoader,
) -> DataLoader:
    """A loader of ``dataset`` in ``sampler``'s order."""
    workers = usable_workers(num_workers)
    return kind(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator),
        persistent_workers=workers > 0,
        # workers' seeds from their own generator, not torch's global one (which augmentation
        # draws from): creating the iterator after a resume then leaves that stream as it was
        generator=torch.Generator().manual_seed(seed),
    )
