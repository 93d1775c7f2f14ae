"""SegmentationDataModule: any ``VolumeSource`` as training patches and whole validation volumes.

A dataset is a subclass that says where its volumes come from (``make_source``); the volume store,
the split, the patch sampling and the loaders are here and the same for every dataset.
``luna.luna16.segmentation.Luna16SegmentationDataModule`` (LUNA16's scans and nodules, the
default of ``configs/luna16_segment.yaml``) and ``luna.points.pairs.MaskPairsDataModule`` (a CSV
of image and mask volumes) are the two that ship.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from luna.data.crops import check_width
from luna.data.inputs import DataInputs
from luna.data.loading import make_loader, world_of
from luna.data.samplers import EvaluationSampler, ResumableLoader
from luna.data.splits import SplitBy, split_items
from luna.data.volume import HU_WINDOW
from luna.segmentation.masks import NODULE_THRESHOLD_HU
from luna.segmentation.patches import PatchDataset, PatchSampler, VolumeDataset
from luna.segmentation.sources import VolumeSource
from luna.segmentation.store import VolumeSettings, VolumeStore, build_store, store_path

log = logging.getLogger(__name__)

SEGMENTATION_CLASSES = ["background", "nodule"]


class SegmentationDataModule(DataInputs[VolumeSource], pl.LightningDataModule):
    """The data of the segmentation stage; a subclass gives the volumes (``make_source``).

    ``prepare_data`` builds the volume store once per node (or once in all with ``shared_cache``);
    ``setup`` opens it and splits its volumes. Training batches are patches, validation and test
    batches one whole volume each (``PatchBatch``; stored int16 values, the module scales them).

    Args:
        cache_dir: where volume stores live (2 bytes a voxel, plus 1 for the mask). None: beside
            the dataset; a phantom's in ``data_cache/``.
        spacing_mm: resample every volume to this voxel size along I, R, C (millimetres), so that
            the network sees the same millimetres in every scan; None keeps each scan's grid.
        intensity_window, intensity_scale: stored values are ``round(clip(v, window) * scale)``.
        mask_threshold: a nodule's mask is its ball's voxels above this value (HU for CT).
        patch_irc: the training patch and the sliding window of inference (stored voxels, I, R, C;
            multiples of 8 for the default U-Net).
        foreground_fraction: the share of training patches centred near a finding.
        split_by, val_stride, val_fold: the split of the volumes, as for crops
            (``luna.data.splits``): by group (LUNA16: scan), or by fold (LUNA16: subset).
        batch_size: training patches per batch on each device (validation: one volume).
        num_workers: DataLoader workers per device.
        samples_per_epoch: training patches per epoch over all devices.
        seed: seeds every patch drawn.
        eval_images: volume ids served by test and predict, ``"all"`` for every stored volume,
            None for the validation split.
        build_processes: volumes read in parallel while building the store.
        skip_bad_scans: warn about unreadable volumes and go on without them.
        shared_cache: ``cache_dir`` is shared by all nodes: build it on global rank 0 only.
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        spacing_mm: tuple[float, float, float] | None = (1.0, 1.0, 1.0),
        intensity_window: tuple[float, float] = HU_WINDOW,
        intensity_scale: float = 1.0,
        mask_threshold: float | None = NODULE_THRESHOLD_HU,
        patch_irc: tuple[int, int, int] = (48, 64, 64),
        foreground_fraction: float = 0.5,
        split_by: SplitBy = "group",
        val_stride: int = 10,
        val_fold: int = 0,
        batch_size: int = 4,
        num_workers: int = 2,
        samples_per_epoch: int = 512,
        seed: int = 0,
        eval_images: list[str] | Literal["all"] | None = None,
        build_processes: int = 2,
        skip_bad_scans: bool = False,
        shared_cache: bool = False,
    ) -> None:
        super().__init__()
        if split_by == "row":
            raise ValueError("split_by='row' puts parts of one volume in both sets: use 'group' or 'fold'")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction={foreground_fraction}: must lie in [0, 1]")
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("val_stride", val_stride, 2),
            ("samples_per_epoch", samples_per_epoch, 1),
            ("build_processes", build_processes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.settings = VolumeSettings(
            None if spacing_mm is None else tuple(spacing_mm),
            tuple(intensity_window),
            float(intensity_scale),
            mask_threshold,
        )
        self.patch_irc = check_width(patch_irc, "data.patch_irc")
        self.foreground_fraction = foreground_fraction
        self.split_by, self.val_stride, self.val_fold = split_by, val_stride, val_fold
        self.batch_size, self.num_workers, self.samples_per_epoch, self.seed = (
            batch_size,
            num_workers,
            samples_per_epoch,
            seed,
        )
        self.eval_images, self.build_processes, self.skip_bad_scans = (
            eval_images,
            build_processes,
            skip_bad_scans,
        )
        self.prepare_data_per_node = not shared_cache
        self.store: VolumeStore | None = None
        self.train_positions = self.val_positions = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ what the module asks
    @property
    def class_names(self) -> list[str]:
        return list(SEGMENTATION_CLASSES)

    @property
    def num_classes(self) -> int:
        return len(SEGMENTATION_CLASSES)

    @property
    def input_widths_irc(self) -> list[list[int]]:
        """The network's input window: the training patch and the sliding window (linked to the model)."""
        return [list(self.patch_irc)]

    @property
    def input_spacings_mm(self) -> list[list[float] | None]:
        return [None if self.settings.spacing_mm is None else list(self.settings.spacing_mm)]

    @property
    def input_intensity(self) -> list[float]:
        return [*self.settings.intensity_window, self.settings.intensity_scale]

    @property
    def image_id_column(self) -> str:
        return self.source().id_column()

    @property
    def image_ids(self) -> list[str]:
        return self.store.image_ids

    # ------------------------------------------------------------------ build and open
    def prepare_data(self) -> None:
        self.prepare_inputs()
        build_store(self.source(), self.cache_dir, self.settings, self.build_processes, self.skip_bad_scans)

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        self.store = VolumeStore(store_path(self.cache_dir, self.source(), self.settings))
        groups = np.asarray(self.store.groups)
        self.train_positions, self.val_positions = split_items(
            groups, self.store.folds, self.split_by, self.val_stride, self.val_fold
        )
        if not len(self.train_positions) or not len(self.val_positions):
            raise ValueError(
                f"split_by={self.split_by!r} with val_stride={self.val_stride} leaves "
                f"{len(self.train_positions)} training and {len(self.val_positions)} validation volumes: "
                "both must be non-empty"
            )
        findings = [len(self.store.findings(k)) for k in range(len(self.store))]
        log.info(
            "split by %s: %d training volumes (%d findings), %d validation volumes (%d findings); store %s",
            self.split_by,
            len(self.train_positions),
            sum(findings[k] for k in self.train_positions),
            len(self.val_positions),
            sum(findings[k] for k in self.val_positions),
            self.store.path,
        )

    @property
    def eval_positions(self) -> np.ndarray:
        """The volumes of test and predict: ``eval_images``, or the validation split."""
        if self.eval_images is None:
            return self.val_positions
        if self.eval_images == "all":
            return np.arange(len(self.store))
        known = {image_id: k for k, image_id in enumerate(self.store.image_ids)}
        unknown = sorted(set(self.eval_images) - set(known))
        if unknown:
            raise ValueError(f"eval_images not in the volume store: {unknown}")
        return np.array([known[image_id] for image_id in self.eval_images], dtype=np.int64)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        world, rank = world_of(self.trainer)
        fill = self.settings.intensity_window[0] * self.settings.intensity_scale
        dataset = PatchDataset(
            self.store, self.train_positions, self.patch_irc, self.foreground_fraction, self.seed, fill
        )
        sampler = PatchSampler(dataset, self.samples_per_epoch, self.seed, world, rank)
        return make_loader(
            self.trainer,
            dataset,
            sampler,
            self.batch_size,
            self.num_workers,
            None,
            self.seed,
            ResumableLoader,
        )

    def _volumes(self, positions: np.ndarray) -> DataLoader:
        world, rank = world_of(self.trainer)
        dataset = VolumeDataset(self.store, positions)
        return make_loader(
            self.trainer,
            dataset,
            EvaluationSampler(dataset, world, rank),
            1,
            self.num_workers,
            None,
            self.seed,
        )

    def val_dataloader(self) -> DataLoader:
        return self._volumes(self.val_positions)

    def test_dataloader(self) -> DataLoader:
        return self._volumes(self.eval_positions)

    def predict_dataloader(self) -> DataLoader:
        return self._volumes(self.eval_positions)
