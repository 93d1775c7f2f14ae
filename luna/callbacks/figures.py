"""The figures callback: draws every registered figure after each validation and test, and sends
them to the run's loggers (TensorBoard and W&B get images, a CSV logger gets PNG files in
``<run>/figures/``).

A new figure is one function in ``luna.metrics.figures`` (``EvaluationOutcome -> Figure | None``) and one
entry in ``FIGURES``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from luna.data.contract import crop_data
from luna.evaluation.figures import figure_to_array, save_png
from luna.metrics.figures import (
    confusion_figure,
    froc_evaluation_figure,
    mistakes_figure,
    pr_curve_figure,
    reliability_figure,
)
from luna.metrics.stage import evaluation_of

log = logging.getLogger(__name__)

FIGURES: dict[str, Callable[..., Figure | None]] = {
    "pr_curve": pr_curve_figure,
    "confusion_matrix": confusion_figure,
    "reliability": reliability_figure,
    "confident_mistakes": mistakes_figure,
    "froc": froc_evaluation_figure,
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
        if (
            outcome is None
            or not trainer.is_global_zero
            or not trainer.loggers
            or not outcome.scalars.get(f"{stage}/samples")
        ):
            return
        image_ids = crop_data(trainer).image_ids
        image_name = (lambda image: f"…{image_ids[image][-12:]}") if image_ids else None
        figures = {}
        for name in self.figures:
            fig = FIGURES[name](outcome, image_name)
            if fig is not None:
                figures[f"{stage}/{name}"] = fig
        log_figures(trainer, figures, outcome.epoch)
