"""LunaDataModule: a LUNA16 folder in, cached 3D crop batches out (splits, sampling, loaders)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, DistributedSampler

from luna.data.cache import CacheInputs, CropCache, build_cache, open_built_cache
from luna.data.candidates import Candidate
from luna.data.ct import DEFAULT_WIDTH_IRC
from luna.data.dataset import CropDataset, EvaluationSampler, TrainingSampler, collate_crops
from luna.data.phantom import MARKER, PhantomSpec, generate_phantom
from luna.data.splits import SplitBy, split_items
from luna.evaluation.files import read_reference
from luna.evaluation.froc import Reference

log = logging.getLogger(__name__)


class LunaDataModule(pl.LightningDataModule):
    """LUNA16 candidates as batches of cached crops.

    ``prepare_data`` builds the crop cache once per node (or once in all when ``shared_cache``);
    ``setup`` opens it and splits it. Batches are ``CropBatch`` dicts (int16 crops; the module
    makes them float32 on the device). Validation and test score LUNA16's FROC (``val/cpm``)
    over the scans they hold, unless ``split_by="candidate"`` puts scans in both sets.

    Args:
        data_dir: the LUNA16 folder (``subset*/<uid>.mhd``, ``annotations.csv``, candidates CSV).
        cache_dir: where crop caches live; node-local scratch or shared storage.
        candidates_file: ``candidates.csv`` (V1) or ``candidates_V2.csv``.
        annotations_file: the annotations CSV inside ``data_dir``.
        val_stride: every ``val_stride``-th series (or candidate) goes to validation (90/10 at 10).
        split_by: ``"series"`` (no CT in both sets; chapter 14), ``"candidate"`` (chapter 11) or
            ``"subset"`` (validation = the scans of ``val_subset``: LUNA16's ten folds).
        val_subset: the validation fold for ``split_by="subset"``, e.g. 0 for ``subset0``.
        width_irc: the crop the model sees (slices, rows, columns).
        context_irc: a larger crop to cache and serve (for on-device augmentation that needs
            context, see ``LunaClassifier``); None caches exactly ``width_irc``.
        batch_size: samples per batch on each device (the global batch is devices x this).
        num_workers: DataLoader worker processes per device.
        negatives_per_positive: N > 0 draws N negatives per positive in each training epoch
            (the book's ``ratio_int``); 0 keeps the natural ratio.
        samples_per_epoch: training samples per epoch over all devices; None = the training split.
        seed: seeds the epoch orders (the splits themselves are deterministic).
        eval_series: series served by the test and predict loaders; None serves validation.
        build_processes: scans read in parallel while building the cache.
        skip_bad_scans: warn about unreadable scans and build without them instead of failing.
        shared_cache: ``cache_dir`` is on storage shared by all nodes: build it on global rank 0
            only (otherwise local rank 0 of each node builds its own copy).
        phantom: generate phantom LUNA16 data into ``data_dir`` first if it does not exist yet.
    """

    def __init__(
        self,
        data_dir: str | Path,
        cache_dir: str | Path = "data_cache",
        candidates_file: str = "candidates.csv",
        annotations_file: str = "annotations.csv",
        val_stride: int = 10,
        split_by: SplitBy = "series",
        val_subset: int = 0,
        width_irc: tuple[int, int, int] = DEFAULT_WIDTH_IRC,
        context_irc: tuple[int, int, int] | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        negatives_per_positive: int = 0,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        eval_series: list[str] | None = None,
        build_processes: int = 2,
        skip_bad_scans: bool = False,
        shared_cache: bool = False,
        phantom: PhantomSpec | None = None,
    ) -> None:
        super().__init__()
        if context_irc is not None and any(c < w for c, w in zip(context_irc, width_irc)):
            raise ValueError(f"context_irc={tuple(context_irc)} must be at least width_irc={tuple(width_irc)} on every axis")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.width_irc = tuple(width_irc)
        self.cache_width_irc = tuple(context_irc or width_irc)
        self.phantom = phantom  # an object, not its config: under LightningCLI, hparams hold the config
        self.prepare_data_per_node = not shared_cache
        self.cache: CropCache | None = None
        self.train_positions = self.val_positions = np.empty(0, dtype=np.int64)
        self.num_classes = 2
        self.class_names = ["non-nodule", "nodule"]
        self._datasets: dict[str, CropDataset] = {}
        self._references: dict[str, Reference | None] = {}

    # ------------------------------------------------------------------ build and open
    def _inputs(self) -> CacheInputs:
        hp = self.hparams
        return CacheInputs.from_folder(self.data_dir, hp.candidates_file, hp.annotations_file, self.cache_width_irc)

    def prepare_data(self) -> None:
        """Generate phantom data if asked, then build the crop cache (no state is assigned)."""
        spec = self.phantom
        if spec is not None:
            if not self.data_dir.exists():
                log.info("generating phantom LUNA16 data (%d series) in %s", spec.series, self.data_dir)
                generate_phantom(self.data_dir, spec)
            elif not (self.data_dir / MARKER).is_file() or PhantomSpec.read(self.data_dir / MARKER) != spec:
                log.warning("%s exists but was not generated from %s; using it as it is", self.data_dir, spec)
        build_cache(self._inputs(), self.cache_dir, self.hparams.build_processes, self.hparams.skip_bad_scans)

    def setup(self, stage: str | None = None) -> None:
        """Open the cache built by ``prepare_data`` and split it (train/val, or eval series)."""
        if self.cache is not None:
            return
        try:
            self.cache = open_built_cache(self.cache_dir, self._inputs())
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}; run prepare_data() first (the Trainer does)") from None
        hp = self.hparams
        self.train_positions, self.val_positions = split_items(
            self.cache.index["series"], self.cache.subsets, hp.split_by, hp.val_stride, f"subset{hp.val_subset}"
        )
        if len(self.train_positions) == 0 or len(self.val_positions) == 0:
            raise ValueError(
                f"split_by={hp.split_by!r} with val_stride={hp.val_stride} leaves {len(self.train_positions)} "
                f"training and {len(self.val_positions)} validation candidates from {len(self.cache.series_uids)} "
                "series: both must be non-empty"
            )
        log.info(
            "split by %s: %d training candidates (%d positives), %d validation (%d positives)",
            hp.split_by, len(self.train_positions), int(self.cache.index["is_nodule"][self.train_positions].sum()),
            len(self.val_positions), int(self.cache.index["is_nodule"][self.val_positions].sum()),
        )

    # ------------------------------------------------------------------ datasets
    def _dataset(self, name: str, positions: np.ndarray, serve_context: bool = False) -> CropDataset:
        """The dataset of a split, built once."""
        if self.cache is None:
            raise RuntimeError("call setup() before asking for data")
        if name not in self._datasets:
            self._datasets[name] = CropDataset(self.cache, positions, self.width_irc, serve_context)
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
        """The test/predict set: ``eval_series`` if given, else the validation split."""
        series = self.hparams.eval_series
        if series is None:
            return self.val_dataset
        return self._dataset("eval", self._eval_positions(series))

    def _eval_positions(self, series: list[str]) -> np.ndarray:
        unknown = sorted(set(series) - set(self.cache.series_uids))
        if unknown:
            raise ValueError(f"eval_series not in the cache (no scan or no candidate): {unknown}")
        wanted = np.isin(self.cache.series_of, [self.cache.series_uids.index(uid) for uid in series])
        return np.flatnonzero(wanted)

    @property
    def series_uids(self) -> list[str]:
        """The uid of each series number in batches (``batch["series"]``)."""
        return self.cache.series_uids

    def candidate(self, index: int) -> Candidate:
        """The candidate behind a batch's ``index`` entry."""
        return self.cache.candidate(index)

    def identify(self, indices: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Series uids and centres (mm ``[n, 3]``) of the candidates at cache ``indices``."""
        uids = self.cache.series_uids
        return [uids[s] for s in self.cache.series_of[indices].tolist()], self.cache.center_xyz[indices]

    def class_frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Class frequencies of the training split as it is (natural) and as epochs sample it."""
        labels = self.train_dataset.labels.astype(np.int64)
        natural = np.bincount(labels, minlength=self.num_classes) / len(labels)
        ratio = self.hparams.negatives_per_positive
        sampled = natural if ratio == 0 else np.array([ratio, 1.0]) / (ratio + 1)
        return natural, sampled

    def froc_reference(self, stage: str) -> Reference | None:
        """The scans and findings LUNA16's FROC scores a stage against, or None when it means nothing.

        ``val`` evaluates the scans of the validation split, ``test`` (and predict) those of the
        evaluation set. With ``split_by="candidate"`` the same scans are in training and
        validation, so no FROC is scored.
        """
        if stage not in self._references:
            if self.hparams.split_by == "candidate":
                log.info("split_by='candidate' puts scans in both training and validation: CPM would be "
                         "meaningless, so it is not computed")
                self._references[stage] = None
            else:
                dataset = self.val_dataset if stage == "val" else self.eval_dataset
                scans = [self.cache.series_uids[s] for s in np.unique(dataset.series).tolist()]
                self._references[stage] = read_reference(self.data_dir, scans, self.hparams.annotations_file)
        return self._references[stage]

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: CropDataset, sampler: DistributedSampler) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_crops,
            pin_memory=self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator),
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        dataset = self.train_dataset
        sampler = TrainingSampler(
            dataset, self.hparams.negatives_per_positive, self.hparams.samples_per_epoch, self.hparams.seed, world, rank
        )
        return self._loader(dataset, sampler)

    def _evaluation_loader(self, dataset: CropDataset) -> DataLoader:
        world, rank = self._world()
        return self._loader(dataset, EvaluationSampler(dataset, world, rank))

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.eval_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.eval_dataset)
