"""The learning-rate finder as a callback: ``python -m luna.fit --config configs/presets/lr_find.yaml``.

Lightning's ``LearningRateFinder`` sweeps the learning rate over a few hundred steps on the real
data and suggests one. This subclass writes what a user needs to choose: the loss-vs-rate plot
(``lr_finder.png``) and the suggestion (``lr_finder.json``) in the run's log folder, and
ends the run there, so the chosen rate is then set in the config (``model.optimizer.init_args.lr``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateFinder

from luna.validation_figures import log_figures

log = logging.getLogger(__name__)


class LearningRateReport(LearningRateFinder):
    """Sweep learning rates at the start of ``fit``, save the plot and the suggestion.

    Args:
        min_lr: lowest rate tried.
        max_lr: highest rate tried.
        num_training_steps: steps of the sweep.
        mode: ``exponential`` or ``linear`` spacing of the rates.

    The run ends after the sweep: the rate lives in the optimizer's config, so it is set there
    rather than patched into a running module.
    """

    def __init__(self, min_lr: float = 1e-6, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential") -> None:
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, mode=mode,
                         update_attr=False)
        self._early_exit = True

    def lr_find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            super().lr_find(trainer, pl_module)
        finally:
            if self.optimal_lr is not None and trainer.is_global_zero:
                self._report(trainer)

    def _report(self, trainer: pl.Trainer) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        suggestion = self.optimal_lr.suggestion()
        results = self.optimal_lr.results
        (folder / "lr_finder.json").write_text(
            json.dumps({"suggestion": suggestion, "lr": results["lr"], "loss": results["loss"]}, indent=1) + "\n"
        )
        fig = self.optimal_lr.plot(suggest=True)
        fig.savefig(folder / "lr_finder.png", dpi=90)
        log_figures(trainer, {"lr_finder": fig}, trainer.current_epoch)
        log.info("learning-rate finder: suggested lr %s (plot: %s)", suggestion, folder / "lr_finder.png")
