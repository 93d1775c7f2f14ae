"""What the segmentation network trains and validates on: patches drawn from the volume store, and
whole validation volumes.

Training patches follow nnU-Net's foreground oversampling: a fixed share is centred near a
finding (a nodule, jittered so that it is not always in the middle; small ones more often), the
rest lie anywhere in a volume. Nodules are a tiny part of a chest CT (about one voxel in
100,000): uniform patches would teach the network that there is never anything to find. Every
draw follows from the seed and the sample's number in the run, so a seed repeats its patches and
a resumed run repeats an uninterrupted one (``luna.data.samplers``).
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from luna.data.samplers import ResumableSampler
from luna.segmentation.store import VolumeStore


class PatchBatch(TypedDict, total=False):
    """A batch of training patches, or of one whole volume (validation, test, predict) with its grid."""

    image: torch.Tensor  # int16 [B, 1, I, R, C], stored values
    mask: torch.Tensor  # uint8 [B, 1, I, R, C]
    index: torch.Tensor  # int64 [B], the volume's number in the store
    origin_xyz: torch.Tensor  # float64 [1, 3], whole volumes only: the stored grid
    spacing_xyz: torch.Tensor  # float64 [1, 3]
    direction: torch.Tensor  # float64 [1, 3, 3]
    findings: torch.Tensor  # float64 [1, n, 4]: x, y, z, diameter in millimetres


def cut_patch(
    volume: np.ndarray, center_irc: np.ndarray, size_irc: tuple[int, int, int], fill: float
) -> np.ndarray:
    """The ``size_irc`` block of ``volume`` centred on ``center_irc`` (voxel ``size // 2`` of the
    block), filled with ``fill`` where it reaches outside the volume."""
    size = np.asarray(size_irc)
    start = np.asarray(center_irc, dtype=np.int64) - size // 2
    low, high = np.maximum(start, 0), np.minimum(start + size, volume.shape)
    patch = np.full(tuple(size), fill, dtype=volume.dtype)
    if (high > low).all():
        inside = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        where = tuple(slice(lo - s, hi - s) for lo, hi, s in zip(low, high, start, strict=True))
        patch[where] = volume[inside]
    return patch


class PatchDataset(Dataset):
    """Training patches of the store's volumes at ``positions``, drawn by sample number.

    Args:
        store: the volume store.
        positions: the training volumes (store indices).
        patch_irc: the patch size (I, R, C), in stored voxels.
        foreground_fraction: the share of patches centred near a finding.
        seed: seeds every draw, with the sample's number.
        fill: the stored value outside a volume (air).
    """

    def __init__(
        self,
        store: VolumeStore,
        positions: np.ndarray,
        patch_irc: tuple[int, int, int],
        foreground_fraction: float,
        seed: int,
        fill: float,
    ) -> None:
        self.store, self.positions = store, np.asarray(positions, dtype=np.int64)
        self.patch_irc, self.foreground_fraction, self.seed, self.fill = (
            tuple(patch_irc),
            foreground_fraction,
            seed,
            fill,
        )
        findings = [
            (k, row, diameter) for k in self.positions.tolist() for row, diameter in self._finding_voxels(k)
        ]
        self.finding_volume = np.array([k for k, _, _ in findings], dtype=np.int64)
        self.finding_irc = np.array([row for _, row, _ in findings], dtype=np.int64).reshape(-1, 3)
        # a finding is drawn in inverse proportion to its diameter: a 3 mm nodule holds a few voxels
        # against thousands of a 30 mm one, and is the one the network needs to see often
        weight = 1.0 / np.maximum(np.array([d for _, _, d in findings], dtype=np.float64), 1.0)
        self.finding_weight = weight / weight.sum() if len(weight) else weight

    def _finding_voxels(self, k: int) -> list[tuple[np.ndarray, float]]:
        """The voxel and diameter of each of volume ``k``'s findings that lies inside it."""
        geometry, found = self.store.geometry(k), self.store.findings(k)
        if not len(found):
            return []
        irc, inside = geometry.inside(found[:, :3])
        return list(zip(irc[inside], found[inside, 3], strict=True))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, sample: int) -> dict:
        rng = np.random.default_rng([self.seed, int(sample)])
        size = np.asarray(self.patch_irc)
        if len(self.finding_irc) and rng.random() < self.foreground_fraction:
            pick = int(rng.choice(len(self.finding_irc), p=self.finding_weight))
            volume = int(self.finding_volume[pick])
            center = self.finding_irc[pick] + rng.integers(
                -(size // 4), size // 4 + 1
            )  # not always in the middle
        else:
            volume = int(self.positions[int(rng.integers(len(self.positions)))])
            center = rng.integers(0, np.asarray(self.store.geometry(volume).shape_irc))
        return {
            "image": cut_patch(self.store.image(volume), center, self.patch_irc, self.fill)[None],
            "mask": cut_patch(self.store.mask(volume), center, self.patch_irc, 0)[None],
            "index": volume,
        }


class PatchSampler(ResumableSampler):
    """``samples_per_epoch`` sample numbers per epoch, each used once in the whole run (epoch ``e``
    draws ``e * samples + k``), shuffled and split into disjoint per-rank shares."""

    def global_order(self) -> np.ndarray:
        numbers = self.epoch * self.total_size + np.arange(self.total_size)
        return np.random.default_rng([self.seed, self.epoch]).permutation(numbers)


class VolumeDataset(Dataset):
    """Whole volumes of the store at ``positions``, one sample each (validation, test)."""

    def __init__(self, store: VolumeStore, positions: np.ndarray) -> None:
        self.store, self.positions = store, np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> dict:
        volume = int(self.positions[k])
        geometry = self.store.geometry(volume)
        return {
            "image": np.array(self.store.image(volume))[None],  # read into memory: torch wants it writable
            "mask": np.array(self.store.mask(volume))[None],
            "index": volume,
            "origin_xyz": geometry.origin_xyz,
            "spacing_xyz": geometry.spacing_xyz,
            "direction": geometry.direction,
            "findings": self.store.findings(volume),
        }
