"""Writing predictions as a LUNA16-style CSV: ``seriesuid,coordX,coordY,coordZ,probability``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


class PredictionCsvWriter(BasePredictionWriter):
    """Writes each candidate's probability during ``predict``, one row per candidate.

    Each process writes its own share to a part file; after the last batch, global rank 0 merges
    the parts in candidate order into ``path`` and removes them, so multi-GPU prediction gives
    the same file as one process.

    Args:
        path: the CSV to write; relative paths are under the run's log folder.
    """

    def __init__(self, path: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)

    def resolved_path(self, trainer: pl.Trainer) -> Path:
        """``path``, under the run's log folder when relative."""
        if self.path.is_absolute():
            return self.path
        return Path(trainer.log_dir or trainer.default_root_dir) / self.path

    def _part(self, trainer: pl.Trainer) -> Path:
        path = self.resolved_path(trainer)
        return path.with_name(f".{path.name}.rank{trainer.global_rank}.part")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        part = self._part(trainer)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text("")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with self._part(trainer).open("a", newline="") as handle:
            writer = csv.writer(handle)
            for index, uid, xyz, probability in zip(
                prediction["index"].tolist(), prediction["series_uid"], prediction["center_xyz"].tolist(),
                prediction["probability"].tolist(),
            ):
                writer.writerow([index, uid, *(repr(v) for v in xyz), repr(probability)])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("prediction parts written")
        if trainer.is_global_zero:
            path = self.resolved_path(trainer)
            parts = sorted(path.parent.glob(f".{path.name}.rank*.part"))
            rows = [row for part in parts for row in csv.reader(part.open(newline=""))]
            rows.sort(key=lambda row: int(row[0]))
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(COLUMNS)
                writer.writerows(row[1:] for row in rows)
            for part in parts:
                part.unlink()
        trainer.strategy.barrier("predictions merged")
