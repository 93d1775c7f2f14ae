"""Writing predictions: ``<id>,coordX,coordY,coordZ,probability``, for LUNA16 its submission format
(``seriesuid,...``); the id column is the data's own (``image`` for a points CSV).

Binary runs write P(class 1) in the ``probability`` column, which is what LUNA16's evaluation
reads (``python -m luna.evaluate``). Runs with more classes write one ``probability_<class>``
column per class instead. Probabilities are written at full precision: the official 100-marks-per-
scan cap drops every mark tied at the 101st probability, and rounding makes ties.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from luna.data.contract import image_data
from luna.io.csvfile import XYZ_COLUMNS, probability_columns
from luna.io.files import writable_problem, write_atomic, write_json_atomic

log = logging.getLogger(__name__)


class PredictionCsvWriter(BasePredictionWriter):
    """Writes each sample's probabilities during ``predict`` as batches finish, one row per sample.

    Each process appends its share to a part file as its batches end (nothing is kept in memory
    but the ids of the images seen); after the last batch, global rank 0 concatenates the parts in
    rank order (each rank holds one contiguous block of the evaluation set, so the rows come out
    in candidate order) into ``path``, and writes beside it (``.json``) the row count, the class
    names, the checkpoint, the data the predictions are about and the images predicted (what
    ``luna.evaluate`` scores by default).

    Args:
        path: the CSV to write; a relative path is under the run folder of the checkpoint (or
            ``trainer.default_root_dir`` when it is not in one).
    """

    def __init__(self, path: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.rows_written = 0
        self._images: set[str] = set()
        self._resolved: Path | None = None

    def resolved_path(self, trainer: pl.Trainer) -> Path:
        """``path``, under the run's log folder when relative (decided once, by every rank together)."""
        if self.path.is_absolute():
            return self.path
        if self._resolved is None:
            self._resolved = (
                Path(trainer.log_dir or trainer.default_root_dir) / self.path
            )  # log_dir: a collective
        return self._resolved

    def _part(self, trainer: pl.Trainer, rank: int) -> Path:
        path = self.resolved_path(trainer)
        return path.with_name(f".{path.name}.rank{rank}.part")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check where the CSV goes before any prediction is made (not after an hour of work)."""
        self._resolved = None
        path = self.resolved_path(trainer)
        problem = f"{path} is a folder" if path.is_dir() else writable_problem(path.parent)
        if problem:
            raise ValueError(f"predictions.path={self.path}: cannot write the predictions there: {problem}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._part(trainer, trainer.global_rank).write_text("")
        self.rows_written, self._images = 0, set()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        """A batch's rows: ``prediction`` holds each row's ``image`` number, ``center_xyz`` (mm)
        and class ``probabilities`` (the classifier: one row per crop; the segmentation: one per
        candidate found in the batch's volume)."""
        ids = image_data(trainer).image_ids
        uids = [ids[image] for image in np.asarray(prediction["image"]).tolist()]
        probabilities = np.asarray(prediction["probabilities"])
        if probabilities.shape[1] == 2:
            probabilities = probabilities[:, 1:]
        centers = np.asarray(prediction["center_xyz"], dtype=np.float64).reshape(-1, 3)
        with self._part(trainer, trainer.global_rank).open("a", newline="") as handle:
            writer = csv.writer(handle)
            for uid, xyz, values in zip(
                uids, centers.tolist(), probabilities.astype(np.float64).tolist(), strict=True
            ):
                writer.writerow([uid, *map(repr, xyz), *map(repr, values)])
        self.rows_written += len(uids)
        predicted = prediction.get(
            "volumes", prediction["image"]
        )  # the segmentation names volumes without rows
        self._images.update(ids[image] for image in np.asarray(predicted).tolist())

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("prediction parts written")
        shares = [
            (self.rows_written, sorted(self._images))
        ]  # every rank's rows and images, counted as written
        if trainer.world_size > 1:
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (self.rows_written, sorted(self._images)))
        rows = sum(count for count, _ in shares)
        images = sorted({image for _, part in shares for image in part})
        if trainer.is_global_zero:
            path = self.resolved_path(trainer)
            parts = [self._part(trainer, rank) for rank in range(trainer.world_size)]
            data = image_data(trainer)
            names = data.class_names
            header = (
                ",".join([data.image_id_column, *XYZ_COLUMNS, *probability_columns(names)]) + "\r\n"
            ).encode()

            def concatenate(out) -> None:
                out.write(header)
                for part in parts:
                    with part.open("rb") as handle:
                        shutil.copyfileobj(handle, out)

            write_atomic(path, concatenate, sum(part.stat().st_size for part in parts))
            for part in parts:
                part.unlink()
            about = {
                "rows": rows,
                "class_names": names,
                "checkpoint": trainer.ckpt_path,
                **data.describe_inputs(),
                "images": images,
            }
            write_json_atomic(path.with_suffix(".json"), about, indent=1)
            log.info("predictions: %d rows written to %s", rows, path)
        trainer.strategy.barrier("predictions merged")
