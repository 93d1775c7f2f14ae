"""CropDataModule: any ``CropSource`` as batches of cached 3D crops (cache, splits, sampling, loaders).

A dataset is a subclass that says where its rows come from (``source``); everything else is here
and the same for every dataset: the int16 crop cache built once per node, the splits, balanced
epochs, DDP-exact samplers and the loaders. ``luna.luna16.datamodule.LunaDataModule`` (LUNA16
candidates, the default), ``luna.luna16.datamodule.MalignancyDataModule`` (the book's chapter 14) and
``luna.points.datamodule.PointsDataModule`` (a CSV of points in any volumes) are the three that ship.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, DistributedSampler

from luna.data.cache.build import CacheSettings, build_cache, cache_path
from luna.data.cache.read import CropCache, open_built_cache
from luna.data.crops import DEFAULT_WIDTH_IRC, View
from luna.data.dataset import CropBatch, CropDataset, collate_crops
from luna.data.inputs import DataInputs
from luna.data.loading import make_loader, world_of
from luna.data.samplers import EvaluationSampler, ResumableLoader, TrainingSampler
from luna.data.splits import SplitBy, split_items
from luna.data.table import CropSource
from luna.data.volume import HU_WINDOW
from luna.evaluation.froc import Reference

log = logging.getLogger(__name__)


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")


class CropDataModule(DataInputs[CropSource], pl.LightningDataModule):
    """The data: a dataset's rows as batches of cached 3D crops; a subclass gives the rows (``source``).

    ``prepare_data`` builds the crop cache once per node (or once in all when ``shared_cache``);
    ``setup`` opens it and splits it. Batches are ``CropBatch`` dicts (int16 crops; the module
    makes them float32 on the device).

    Args:
        cache_dir: where crop caches live: node-local scratch or shared storage, with room for
            2 bytes a voxel (LUNA16 V2: about 110 GB). None: beside the dataset (the subclass
            says where), which keeps real data's cache out of the code checkout; generated
            phantom data and its caches go to ``data_cache/``.
        width_irc: the crop the model sees (slices, rows, columns).
        spacing_mm: the crop's voxel size in millimetres along I, R, C (e.g. ``[1.25, 0.7, 0.7]``
            or ``[1, 1, 1]``): each crop is resampled from its scan, centred exactly on the
            candidate, so that it covers the same millimetres in every scan; outside the scan it
            is filled with the low end of ``intensity_window`` (CT: air). None: ``width_irc``
            voxels of the scan's own grid (the book), shifted inside at the scan's borders.
        context_irc: a larger crop to cache and serve for training (on-device augmentation then
            sees real voxels around the model's crop), at the same spacing; None caches exactly
            ``width_irc``.
        extra_views: more views of each candidate, each with its own ``width_irc``, ``spacing_mm``
            and ``context_irc`` (e.g. three fields of view, as Dou et al. 2017); all are cut at
            build time, batches carry them in ``extra_views`` and the network gets one crop per
            view (``luna.models.MultiViewLunaModel`` by default).
        intensity_window: values are clipped to this window (CT: [-1000, 1000] HU)...
        intensity_scale: ...then multiplied by this and rounded to int16 (1 for CT's integer HU).
        split_by: ``"group"`` strides over the split groups sorted by id (LUNA16: scans; no scan
            in both sets, the book's chapter 14), ``"row"`` over the rows (chapter 11: scans in both
            sets) or ``"fold"`` (validation = the images of fold ``val_fold``: LUNA16's ten subsets).
        val_stride: every ``val_stride``-th group (or row) goes to validation (90/10 at 10).
        val_fold: the validation fold for ``split_by="fold"``, e.g. 0 for LUNA16's ``subset0``.
        batch_size: samples per batch on each device (the global batch is devices x this).
        num_workers: DataLoader worker processes per device.
        negatives_per_positive: N > 0 draws N negatives per positive in each training epoch
            (the book's ``ratio_int``); with more than two classes, 1 draws every class equally
            often. 0 keeps the natural class ratio.
        samples_per_epoch: training samples per epoch over all devices; None = the training split.
        seed: seeds the epoch orders (the splits themselves are deterministic).
        eval_images: image ids (LUNA16: series uids) served by test and predict, or ``"all"`` for
            every crop of the cache; None serves the validation split.
        build_processes: volumes read in parallel while building the cache.
        skip_bad_scans: warn about unreadable volumes and build without them instead of failing.
        shared_cache: ``cache_dir`` is on storage shared by all nodes: build it on global rank 0
            only (otherwise local rank 0 of each node builds its own copy).
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        width_irc: tuple[int, int, int] = DEFAULT_WIDTH_IRC,
        spacing_mm: tuple[float, float, float] | None = None,
        context_irc: tuple[int, int, int] | None = None,
        extra_views: list[View] | None = None,
        intensity_window: tuple[float, float] = HU_WINDOW,
        intensity_scale: float = 1.0,
        split_by: SplitBy = "group",
        val_stride: int = 10,
        val_fold: int = 0,
        batch_size: int = 32,
        num_workers: int = 2,
        negatives_per_positive: int = 0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        eval_images: list[str] | Literal["all"] | None = None,
        build_processes: int = 2,
        skip_bad_scans: bool = False,
        shared_cache: bool = False,
    ) -> None:
        super().__init__()
        _positive("batch_size", batch_size)
        _positive("num_workers", num_workers, 0)
        _positive("val_stride", val_stride, 2)
        _positive("samples_per_epoch", samples_per_epoch)
        _positive("negatives_per_positive", negatives_per_positive, 0)
        _positive("build_processes", build_processes)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        given = [View(width_irc, spacing_mm, context_irc), *(extra_views or [])]
        self.views = [
            view.checked("data." if k == 0 else f"data.extra_views[{k - 1}].") for k, view in enumerate(given)
        ]
        names = (
            "the first view (data.width_irc, data.spacing_mm)",
            *(f"data.extra_views[{k}]" for k in range(len(self.views) - 1)),
        )
        self.settings = CacheSettings(
            tuple(View(view.cached_irc, view.spacing_mm) for view in self.views),
            tuple(intensity_window),
            float(intensity_scale),
            names,
        )
        self.split_by, self.val_stride, self.val_fold = split_by, val_stride, val_fold
        self.batch_size, self.num_workers = batch_size, num_workers
        self.negatives_per_positive, self.samples_per_epoch, self.seed = (
            negatives_per_positive,
            samples_per_epoch,
            seed,
        )
        self.eval_images, self.build_processes = eval_images, build_processes
        self.skip_bad_scans = skip_bad_scans
        self.prepare_data_per_node = not shared_cache
        self.cache: CropCache | None = None
        self.train_positions = self.val_positions = np.empty(0, dtype=np.int64)
        self._datasets: dict[str, CropDataset] = {}

    @property
    def class_names(self) -> list[str]:
        """One name per class, label order (linked to the model by the CLI)."""
        return self.source().class_names()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_widths_irc(self) -> list[list[int]]:
        """The crop the network sees of each view (linked to the model by the CLI; lists, which YAML
        and checkpoints keep as plain data)."""
        return [list(view.width_irc) for view in self.views]

    @property
    def input_spacings_mm(self) -> list[list[float] | None]:
        """Each view's voxel size in millimetres, None for the scan's own voxels (linked to the model)."""
        return [None if view.spacing_mm is None else list(view.spacing_mm) for view in self.views]

    @property
    def input_intensity(self) -> list[float]:
        """``[window low, window high, scale]`` of the stored values (linked to the model)."""
        return [*self.settings.intensity_window, self.settings.intensity_scale]

    def evaluation_reference(self, stage: str) -> Reference | None:
        """What a FROC analysis scores a stage against; None (the default): no FROC for this data."""
        return None

    # ------------------------------------------------------------------ build and open
    def prepare_data(self) -> None:
        """Make the inputs if asked, then build the crop cache (no state is assigned)."""
        self.prepare_inputs()
        build_cache(self.source(), self.cache_dir, self.settings, self.build_processes, self.skip_bad_scans)

    def setup(self, stage: str | None = None) -> None:
        """Open the cache built by ``prepare_data`` and split it (train/val, or eval series)."""
        if self.cache is not None:
            return
        path = cache_path(self.cache_dir, self.source(), self.settings)
        try:
            self.cache = open_built_cache(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the crop cache {path} is not built; the Trainer builds it in prepare_data() "
                "(call prepare_data() first when not using a Trainer; in a multi-process run, "
                "the process that builds it failed: see its log)"
            ) from None
        groups = np.asarray(self.cache.groups)[self.cache.image_of]
        folds = self.cache.folds[self.cache.image_of]
        self.train_positions, self.val_positions = split_items(
            groups, folds, self.split_by, self.val_stride, self.val_fold
        )
        labels = self.cache.labels
        if len(self.train_positions) == 0 or len(self.val_positions) == 0:
            raise ValueError(
                f"split_by={self.split_by!r} with val_stride={self.val_stride} leaves "
                f"{len(self.train_positions)} "
                f"training and {len(self.val_positions)} validation crops from {len(set(groups.tolist()))} "
                "groups: "
                "both must be non-empty"
            )
        describe = lambda positions: ", ".join(  # noqa: E731
            f"{n} {name}"
            for name, n in zip(
                self.cache.class_names,
                np.bincount(labels[positions], minlength=len(self.cache.class_names)),
                strict=True,
            )
        )
        val_groups = len(set(groups[self.val_positions].tolist()))
        how = {
            "group": f"group ({len(set(groups.tolist()))} groups, e.g. scans or patients; "
            f"{val_groups} validate)",
            "fold": f"fold (fold {self.val_fold} validates: {val_groups} groups)",
            "row": f"row (every {self.val_stride}th crop validates; groups are not kept apart)",
        }[self.split_by]
        log.info(
            "split by %s: %d training crops (%s), %d validation (%s); crop cache %s",
            how,
            len(self.train_positions),
            describe(self.train_positions),
            len(self.val_positions),
            describe(self.val_positions),
            self.cache.path,
        )

    # ------------------------------------------------------------------ datasets
    def _dataset(self, name: str, positions: np.ndarray, serve_context: bool = False) -> CropDataset:
        """The dataset of a split, built once."""
        if self.cache is None:
            raise RuntimeError("call setup() before asking for data")
        if name not in self._datasets:
            self._datasets[name] = CropDataset(self.cache, positions, self.input_widths_irc, serve_context)
        return self._datasets[name]

    @property
    def train_dataset(self) -> CropDataset:
        """The training split, with the cached context around each crop for augmentation."""
        return self._dataset("train", self.train_positions, serve_context=True)

    @property
    def val_dataset(self) -> CropDataset:
        return self._dataset("val", self.val_positions)

    @property
    def eval_dataset(self) -> CropDataset:
        """The test/predict set: ``eval_images`` if given, else the validation split."""
        if self.eval_images is None:
            return self.val_dataset
        if self.eval_images == "all":
            return self._dataset("eval", np.arange(len(self.cache)))
        known = {image_id: k for k, image_id in enumerate(self.cache.image_ids)}
        unknown = sorted(set(self.eval_images) - set(known))
        if unknown:
            raise ValueError(f"eval_images not in the crop cache (no volume or no row): {unknown}")
        wanted = np.isin(self.cache.image_of, [known[image_id] for image_id in self.eval_images])
        return self._dataset("eval", np.flatnonzero(wanted))

    @property
    def image_id_column(self) -> str:
        """What an image id is called in a predictions file (LUNA16: ``seriesuid``)."""
        return self.source().id_column()

    @property
    def image_ids(self) -> list[str]:
        """The id of each image number in batches (``batch["image"]``; LUNA16: series uids)."""
        return self.cache.image_ids

    def identify(self, indices: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Image ids and centres (mm ``[n, 3]``) of the crops at cache ``indices``."""
        ids = self.cache.image_ids
        return [ids[k] for k in self.cache.image_of[indices].tolist()], np.asarray(
            self.cache.center_xyz[indices]
        )

    def crops_at(self, indices: np.ndarray) -> CropBatch:
        """The crops at cache ``indices`` as evaluation serves them, collated (every view): what
        the saliency of a mistake is computed on, well after its batch has gone."""
        if self.cache is None:
            raise RuntimeError("call setup() before asking for data")
        dataset = CropDataset(self.cache, np.asarray(indices, dtype=np.int64), self.input_widths_irc)
        return collate_crops([dataset[k] for k in range(len(dataset))])

    def class_frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Class frequencies of the training split as it is (natural) and as epochs sample it."""
        labels = self.train_dataset.labels
        natural = np.bincount(labels, minlength=self.num_classes) / len(labels)
        ratio = self.negatives_per_positive
        if ratio == 0:
            return natural, natural
        if self.num_classes == 2:
            return natural, np.array([ratio, 1.0]) / (ratio + 1)
        return natural, np.full(self.num_classes, 1.0 / self.num_classes)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: CropDataset, sampler: DistributedSampler, kind: type[DataLoader] = DataLoader):
        return make_loader(
            self.trainer, dataset, sampler, self.batch_size, self.num_workers, collate_crops, self.seed, kind
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = world_of(self.trainer)
        dataset = self.train_dataset
        sampler = TrainingSampler(
            dataset, self.negatives_per_positive, self.samples_per_epoch, self.seed, world, rank
        )
        return self._loader(dataset, sampler, ResumableLoader)

    def _evaluation_loader(self, dataset: CropDataset) -> DataLoader:
        world, rank = world_of(self.trainer)
        return self._loader(dataset, EvaluationSampler(dataset, world, rank))

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.eval_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.eval_dataset)
