"""The figures callback: draws every registered figure after each validation and test, and sends
them to the run's loggers (TensorBoard and W&B get images, a CSV logger gets PNG files in
``<run>/figures/``).

A new figure is one function in ``luna.metrics.figures`` (an outcome -> ``Figure | None``) and one
entry in ``FIGURES``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from luna.data.contract import crop_data, image_data
from luna.evaluation.figures import figure_to_array, save_png
from luna.metrics.figures import (
    confusion_figure,
    froc_evaluation_figure,
    mistakes_figure,
    pr_curve_figure,
    reliability_figure,
    segmentation_figure,
)
from luna.metrics.segmentation import SegmentationOutcome
from luna.metrics.stage import EvaluationOutcome, evaluation_of
from luna.training.module import LunaClassifier
from luna.training.saliency import with_saliency

log = logging.getLogger(__name__)

# name -> (the kind of evaluation it draws, the figure); a new figure is one line here
FIGURES: dict[str, tuple[type, Callable[..., Figure | None]]] = {
    "pr_curve": (EvaluationOutcome, pr_curve_figure),
    "confusion_matrix": (EvaluationOutcome, confusion_figure),
    "reliability": (EvaluationOutcome, reliability_figure),
    "confident_mistakes": (EvaluationOutcome, mistakes_figure),
    "froc": (EvaluationOutcome, froc_evaluation_figure),
    "segmentation": (SegmentationOutcome, segmentation_figure),
}


def log_figures(trainer: pl.Trainer, figures: dict[str, Figure], epoch: int) -> list[Path]:
    """Send ``{tag: figure}`` to every logger of ``trainer``; returns the PNG files written."""
    written = []
    for logger in trainer.loggers:
        for tag, fig in figures.items():
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    tag, figure_to_array(fig), global_step=trainer.global_step, dataformats="HWC"
                )
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[figure_to_array(fig)], step=trainer.global_step)
            elif isinstance(logger, CSVLogger):
                folder = Path(logger.log_dir) / "figures"
                folder.mkdir(parents=True, exist_ok=True)
                written.append(save_png(fig, folder / f"{tag.replace('/', '_')}-epoch{epoch:03d}.png"))
    return written


class ValidationFigures(pl.Callback):
    """Figures of each validation and test (global rank 0 draws; nothing during the sanity check).

    Args:
        figures: names from ``FIGURES`` to draw; None draws all.
    """

    def __init__(self, figures: list[str] | None = None) -> None:
        unknown = sorted(set(figures or []) - set(FIGURES))
        if unknown:
            raise ValueError(f"unknown figure(s) {unknown}; known: {sorted(FIGURES)}")
        self.figures = list(figures) if figures is not None else list(FIGURES)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        outcome = evaluation_of(pl_module, stage)
        if outcome is None or not trainer.is_global_zero or not trainer.loggers:
            return
        if isinstance(outcome, EvaluationOutcome) and not outcome.scalars.get(f"{stage}/samples"):
            return  # nothing was evaluated
        if (
            isinstance(outcome, EvaluationOutcome)
            and isinstance(pl_module, LunaClassifier)
            and pl_module.evaluation.saliency
            and "confident_mistakes" in self.figures
        ):
            outcome = replace(
                outcome, mistakes=with_saliency(outcome.mistakes, pl_module, crop_data(trainer))
            )
        image_ids = image_data(trainer).image_ids
        image_name = (lambda image: f"…{image_ids[image][-12:]}") if image_ids else None
        figures = {}
        for name in self.figures:
            kind, draw = FIGURES[name]
            fig = draw(outcome, image_name) if isinstance(outcome, kind) else None
            if fig is not None:
                figures[f"{stage}/{name}"] = fig
        log_figures(trainer, figures, outcome.epoch)
