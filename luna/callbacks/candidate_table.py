"""A table of the evaluated candidates in Weights & Biases: the crop beside the prediction.

After every validation and test, with a W&B logger in the run, one ``wandb.Table`` per stage
(``val/candidates``, ``test/candidates``): a row per candidate with its image, centre, label,
prediction, probability and whether it was right, and its three middle slices (axial, coronal,
sagittal through the candidate) as images. The table is capped: every positive (a class other
than the first), the most confident mistakes, and a random sample of the rest, so that it stays
small at LUNA16's size; the random part is seeded. Under DDP every rank keeps its own share and
global rank 0 merges them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from luna.data.contract import CropData, crop_data
from luna.metrics.figures import display_window, saliency_overlay
from luna.metrics.mistakes import planes_through, voxel_inside
from luna.training.module import LunaClassifier
from luna.training.saliency import occlusion_maps

COLUMNS = [
    "image_id",
    "x_mm",
    "y_mm",
    "z_mm",
    "label",
    "predicted",
    "probability",
    "correct",
    "axial",
    "coronal",
    "sagittal",
]


@dataclass
class _Row:
    index: int
    label: int
    predicted: int
    probability: float  # of the predicted class
    slices: tuple[np.ndarray, np.ndarray, np.ndarray]  # uint8 axial, coronal, sagittal
    marker: tuple[int, int, int]  # the candidate's voxel in the crop, where the slices cross


def _slices(crops: torch.Tensor, at: torch.Tensor, window: tuple[float, float]) -> list[np.ndarray]:
    """The axial, coronal and sagittal planes of crops ``[B, I, R, C]`` through their voxels ``at``
    ``[B, 3]`` (I, R, C, inside the crop), as uint8 arrays ``[B, h, w]`` with ``window`` black to
    white: one pass for a batch."""
    low, high = window
    return [
        ((plane.float().clamp(low, high) - low) / (high - low) * 255).round().byte().cpu().numpy()
        for plane in planes_through(crops, at).values()
    ]


class CandidateTable(pl.Callback):
    """A ``wandb.Table`` of candidates after each validation and test (only when a W&B logger is on).

    Args:
        max_rows: the most rows of one table (positives first, then mistakes, then a sample).
        mistakes: the most confident mistakes kept.
        seed: seeds the random sample of the other candidates.
    """

    def __init__(self, max_rows: int = 300, mistakes: int = 50, seed: int = 0) -> None:
        if max_rows < 1 or mistakes < 0:
            raise ValueError(
                f"max_rows={max_rows}, mistakes={mistakes}: expected max_rows >= 1 and mistakes >= 0"
            )
        self.max_rows, self.mistakes, self.seed = max_rows, mistakes, seed
        self._reset()

    def _reset(self) -> None:
        self._positives: list[_Row] = []
        self._mistakes: list[tuple[float, int, _Row]] = []  # a heap of the most confident
        self._sample: list[_Row] = []
        self._seen = self._offered = 0
        self._rng = np.random.default_rng(self.seed)

    @staticmethod
    def _active(trainer: pl.Trainer) -> bool:
        """A W&B logger is on, a classifier evaluates (the segmentation's outputs are volumes), and
        this is not the sanity check."""
        return (
            any(isinstance(logger, WandbLogger) for logger in trainer.loggers)
            and isinstance(trainer.lightning_module, LunaClassifier)
            and not trainer.sanity_checking
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._active(trainer) and isinstance(outputs, dict) and "probabilities" in outputs:
            self._keep(
                batch, outputs["probabilities"], display_window(pl_module.hparams.get("input_intensity"))
            )

    on_test_batch_end = on_validation_batch_end

    def _keep(self, batch: dict, probabilities: torch.Tensor, window: tuple[float, float]) -> None:
        confidence, predicted = probabilities.max(dim=1)
        marker = voxel_inside(batch["offset_irc"] - batch["window_irc"], batch["crop"].shape[2:])
        axial, coronal, sagittal = _slices(batch["crop"][:, 0], marker, window)
        markers = marker.cpu().numpy()
        for row in range(
            len(batch["label"])
        ):  # a kept row copies its slices: it must not hold the whole batch
            kept = _Row(
                int(batch["index"][row]),
                int(batch["label"][row]),
                int(predicted[row]),
                float(confidence[row]),
                (axial[row].copy(), coronal[row].copy(), sagittal[row].copy()),
                tuple(int(v) for v in markers[row]),
            )
            if kept.label != 0:
                self._positives.append(kept)
                continue
            if (
                kept.predicted != kept.label and self.mistakes
            ):  # the most confident stay; the others join the rest
                self._seen += 1
                entry = (kept.probability, self._seen, kept)
                if len(self._mistakes) < self.mistakes:
                    heapq.heappush(self._mistakes, entry)
                    continue
                kept = heapq.heappushpop(self._mistakes, entry)[2]
            self._sample_rest(kept)

    def _sample_rest(self, row: _Row) -> None:
        """Reservoir sampling of everything that is neither a positive nor a kept mistake."""
        self._offered += 1
        if len(self._sample) < self.max_rows:
            self._sample.append(row)
            return
        slot = int(self._rng.integers(0, self._offered))
        if slot < self.max_rows:
            self._sample[slot] = row

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, "test")

    def _log(self, trainer: pl.Trainer, stage: str) -> None:
        """Merge every rank's rows (on global rank 0) and send the table."""
        if not self._active(trainer):
            return
        parts = (self._positives, [entry[2] for entry in self._mistakes], self._sample)
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, parts)
        else:
            gathered = [parts]
        if not trainer.is_global_zero:
            return
        positives = [row for part in gathered for row in part[0]]
        mistakes = sorted((row for part in gathered for row in part[1]), key=lambda row: -row.probability)
        sample = [row for part in gathered for row in part[2]]
        self._rng.shuffle(sample)
        rows = (positives + mistakes[: self.mistakes])[: self.max_rows]
        rows += sample[: self.max_rows - len(rows)]
        self._send(trainer, stage, rows)

    def _send(self, trainer: pl.Trainer, stage: str, rows: list[_Row]) -> None:
        import wandb

        source = crop_data(trainer)
        names = source.class_names
        ids, centers = source.identify(np.array([row.index for row in rows], dtype=np.int64))
        data = [
            [
                image_id,
                x,
                y,
                z,
                names[row.label],
                names[row.predicted],
                row.probability,
                row.label == row.predicted,
                *(wandb.Image(plane) for plane in row.slices),
            ]
            for row, image_id, (x, y, z) in zip(rows, ids, centers.tolist(), strict=True)
        ]
        columns = COLUMNS
        module = trainer.lightning_module
        if module.evaluation.saliency:  # where the model looked, on the axial slice of each mistake
            columns = [*COLUMNS, "saliency"]
            overlays = self._saliency(module, source, rows)
            data = [
                [*values, None if overlay is None else wandb.Image(overlay)]
                for values, overlay in zip(data, overlays, strict=True)
            ]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(f"{stage}/candidates", columns=columns, data=data, step=trainer.global_step)

    @staticmethod
    def _saliency(module: LunaClassifier, source: CropData, rows: list[_Row]) -> list[np.ndarray | None]:
        """An RGB axial slice with the occlusion map over it for each mistake, None for the others."""
        wrong = [k for k, row in enumerate(rows) if row.predicted != row.label]
        maps = occlusion_maps(
            module,
            source,
            np.array([rows[k].index for k in wrong], dtype=np.int64),
            np.array([rows[k].predicted for k in wrong], dtype=np.int64),
        )
        overlays: list[np.ndarray | None] = [None] * len(rows)
        for k, saliency in zip(wrong, maps, strict=True):
            overlays[k] = saliency_overlay(rows[k].slices[0], saliency[rows[k].marker[0]])
        return overlays
