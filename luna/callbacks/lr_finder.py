"""The learning-rate finder as a callback: ``python -m luna.fit --config configs/presets/lr_find.yaml``.

Lightning's ``LearningRateFinder`` sweeps the learning rate over a few hundred steps on the real
data. This subclass chooses the rate with a rule that agrees with the curve a user sees, says which
rule, writes the plot (``lr_finder.png``, log-scaled and clipped to the useful range) and the
numbers (``lr_finder.json``) into the run folder, and ends the run there, so that the chosen rate
is then set in the config (``model.optimizer.init_args.lr``).

The rule: smooth the recorded loss, keep the part before it starts to diverge (up to its
minimum), and take the rate where it falls fastest against log(rate). (Lightning's own
suggestion takes the steepest point of the raw, noisy gradient, and can land far below where the
loss actually drops.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import LearningRateFinder

from luna.callbacks.figures import log_figures

log = logging.getLogger(__name__)

RULE = "the steepest descent of the smoothed loss against log(rate), before the loss starts to rise"


def suggest_learning_rate(lrs: np.ndarray, losses: np.ndarray, window: int = 5) -> float | None:
    """The rate at which the smoothed loss falls fastest, before its minimum (None without such a fall)."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.isfinite(losses) & (lrs > 0)
    lrs, losses = lrs[finite], losses[finite]
    if len(losses) < window + 2:
        return None
    smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
    centre = lrs[window // 2 : window // 2 + len(smoothed)]
    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        return None  # the loss only rises: no rate in this range trains
    slope = np.gradient(smoothed[: lowest + 1], np.log10(centre[: lowest + 1]))
    steepest = int(np.argmin(slope))
    return float(centre[steepest]) if slope[steepest] < 0 else None


def lr_finder_figure(lrs: np.ndarray, losses: np.ndarray, suggestion: float | None) -> Figure:
    """Loss against learning rate on a log axis, clipped to the range where it is informative."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.isfinite(losses)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(lrs[finite], losses[finite], color="C0", label="loss (smoothed by the finder)")
    if finite.any():
        low = float(np.min(losses[finite]))
        start = float(np.median(losses[finite][: max(3, finite.sum() // 10)]))
        ax.set_ylim(low - 0.1 * (start - low + 1e-9), start + 0.5 * (start - low + 1e-9))  # divergence clipped
        lowest = int(np.argmin(np.where(finite, losses, np.inf)))
        ax.axvline(lrs[lowest], color="grey", ls=":", label=f"lowest loss at {lrs[lowest]:.2g}")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", label=f"suggested {suggestion:.2g} (steepest descent)")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="training loss",
           title=f"learning-rate finder: {len(lrs)} steps, {lrs.min():.1g} to {lrs.max():.1g}")
    ax.legend(loc="upper left", fontsize=8)
    return fig


class LearningRateReport(LearningRateFinder):
    """Sweep learning rates at the start of ``fit``, save the plot and the suggestion, and stop.

    Args:
        min_lr: lowest rate tried.
        max_lr: highest rate tried.
        num_training_steps: steps of the sweep.
        mode: ``exponential`` or ``linear`` spacing of the rates.
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
        # the first logger's folder: trainer.log_dir would be a collective, and only rank 0 is here
        folder = Path((trainer.loggers[0].log_dir if trainer.loggers else None) or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        results = self.optimal_lr.results
        lrs, losses = np.array(results["lr"]), np.array(results["loss"])
        suggestion = suggest_learning_rate(lrs, losses)
        (folder / "lr_finder.json").write_text(json.dumps(
            {"suggestion": suggestion, "rule": RULE, "lr": results["lr"], "loss": results["loss"]}, indent=1) + "\n")
        fig = lr_finder_figure(lrs, losses, suggestion)
        fig.savefig(folder / "lr_finder.png", dpi=100)
        log_figures(trainer, {"lr_finder": fig}, trainer.current_epoch)
        if suggestion is None:
            log.warning("learning-rate finder: the loss never fell in [%g, %g]; no suggestion (plot: %s)",
                        lrs.min(), lrs.max(), folder / "lr_finder.png")
        else:
            log.info("learning-rate finder: suggested lr %.3g, %s; set it with "
                     "--model.optimizer.init_args.lr=%.3g (plot: %s)", suggestion, RULE, suggestion,
                     folder / "lr_finder.png")
