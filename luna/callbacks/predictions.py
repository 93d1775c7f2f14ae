"""Writing predictions as a LUNA16 submission: ``seriesuid,coordX,coordY,coordZ,probability``.

Binary runs write P(class 1) in the ``probability`` column, which is what LUNA16's evaluation
reads (``python -m luna.evaluate``). Runs with more classes write one ``probability_<class>``
column per class instead. Probabilities are written at full precision: the official 100-marks-per-
scan cap drops every mark tied at the 101st probability, and rounding makes ties.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

log = logging.getLogger(__name__)

ID_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


def probability_columns(class_names: list[str]) -> list[str]:
    """``probability`` for two classes (P(class 1), LUNA16's column), else ``probability_<class>`` each."""
    return ["probability"] if len(class_names) == 2 else [f"probability_{name}" for name in class_names]


class PredictionCsvWriter(BasePredictionWriter):
    """Writes each sample's probabilities during ``predict`` as batches finish, one row per sample.

    Each process appends its share to a part file as its batches end (nothing is kept in memory);
    after the last batch, global rank 0 concatenates the parts in rank order (each rank holds one
    contiguous block of the evaluation set, so the rows come out in candidate order) into ``path``,
    and writes beside it (``.json``) the row count, the class names, the checkpoint and the data
    folder the predictions are about.

    Args:
        path: the CSV to write; relative paths are under the run's log folder.
    """

    def __init__(self, path: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.rows_written = 0
        self._resolved: Path | None = None

    def resolved_path(self, trainer: pl.Trainer) -> Path:
        """``path``, under the run's log folder when relative (decided once, by every rank together)."""
        if self.path.is_absolute():
            return self.path
        if self._resolved is None:
            self._resolved = Path(trainer.log_dir or trainer.default_root_dir) / self.path  # log_dir: a collective
        return self._resolved

    def _part(self, trainer: pl.Trainer, rank: int) -> Path:
        path = self.resolved_path(trainer)
        return path.with_name(f".{path.name}.rank{rank}.part")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resolved = None
        part = self._part(trainer, trainer.global_rank)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text("")
        self.rows_written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        uids, centers = trainer.datamodule.identify(prediction["index"])
        probabilities = prediction["probabilities"]
        if probabilities.shape[1] == 2:
            probabilities = probabilities[:, 1:]
        with self._part(trainer, trainer.global_rank).open("a", newline="") as handle:
            writer = csv.writer(handle)
            for uid, xyz, values in zip(uids, centers.tolist(), probabilities.astype(np.float64).tolist()):
                writer.writerow([uid, *map(repr, xyz), *map(repr, values)])
        self.rows_written += len(uids)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("prediction parts written")
        if trainer.is_global_zero:
            path = self.resolved_path(trainer)
            parts = [self._part(trainer, rank) for rank in range(trainer.world_size)]
            names = getattr(trainer.datamodule, "class_names", ["class0", "class1"])
            temporary = path.with_name(f".{path.name}.tmp")
            with temporary.open("w", newline="") as out:
                csv.writer(out).writerow([*ID_COLUMNS, *probability_columns(names)])
                for part in parts:
                    with part.open() as handle:
                        shutil.copyfileobj(handle, out)
            temporary.replace(path)
            for part in parts:
                part.unlink()
            with path.open() as handle:
                rows = sum(1 for _ in handle) - 1
            data_dir = getattr(trainer.datamodule, "data_dir", None)
            about = {"rows": rows, "class_names": names, "checkpoint": trainer.ckpt_path,
                     "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None}
            path.with_suffix(".json").write_text(json.dumps(about, indent=1) + "\n")
            log.info("predictions: %d rows written to %s", rows, path)
        trainer.strategy.barrier("predictions merged")
