"""The learning-rate finder as a callback: ``python -m luna.fit --config configs/presets/lr_find.yaml``.

Lightning's ``LearningRateFinder`` sweeps the learning rate over a few hundred steps on the real
data. This subclass chooses the rate with a rule that agrees with the curve a user sees, says which
rule, writes the plot (``lr_finder.png``, log-scaled and clipped to the useful range) and the
numbers (``lr_finder.json``) into the run folder, and ends the run there, so that the chosen rate
is then set in the config (``model.optimizer.init_args.lr``).

The rule: smooth the recorded loss (each step's own, not the finder's running average), and take
the rate where it falls fastest against log(rate), looking only at the stretch that leads to its
lowest point and stays a tenth of its fall (from its starting level, the lowest of its first steps, to
that lowest point) below the start. A rise at the start (a head whose first logits are far from
zero) falls back only to the starting level, and
a flat start has not fallen at all, so neither can be chosen; what diverges after the lowest point
is not looked at. (Lightning's own suggestion takes the steepest point of the raw, noisy gradient
anywhere, and can land in such a rise, far below any rate that trains.)
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import LearningRateFinder
from pytorch_lightning.tuner import lr_finder as lightning_lr_finder  # its tqdm: see lr_find

from luna.callbacks.figures import log_figures
from luna.evaluation.figures import save_png
from luna.io.files import write_json_atomic

log = logging.getLogger(__name__)

RULE = (
    "the steepest descent of the smoothed loss against log(rate), on the stretch that leads to its lowest "
    "point and stays a tenth of its fall below its start"
)


def _finite(lrs: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The steps with a finite loss at a positive rate."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    kept = np.isfinite(losses) & (lrs > 0)
    return lrs[kept], losses[kept]


def _smoothed(lrs: np.ndarray, losses: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The loss's moving average over ``window`` steps, and the rate at the centre of each."""
    smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
    return lrs[window // 2 : window // 2 + len(smoothed)], smoothed


def suggest_learning_rate(lrs: np.ndarray, losses: np.ndarray, window: int = 5) -> float | None:
    """The suggested rate (see the module's rule), or None when the loss never clearly falls."""
    lrs, losses = _finite(lrs, losses)
    if len(losses) < window + 2:
        return None
    centre, smoothed = _smoothed(lrs, losses, window)
    start, lowest = float(losses[:window].min()), int(np.argmin(smoothed))  # the lowest of the first steps
    fall = start - float(smoothed[lowest])
    if fall <= 0.01 * abs(start) or lowest < 2:
        return None  # the loss never clearly falls: no rate in this range trains
    above = np.flatnonzero(smoothed[: lowest + 1] > start - 0.1 * fall)
    begun = int(above[-1]) + 1 if len(above) else 0  # past the last point short of a tenth of the fall
    slope = np.gradient(smoothed, np.log10(centre))[begun : lowest + 1]
    return float(centre[begun + int(np.argmin(slope))])


def lr_finder_figure(
    lrs: np.ndarray, losses: np.ndarray, suggestion: float | None, window: int = 5
) -> Figure:
    """Loss against learning rate on a log axis: every step's loss and its smoothed curve, clipped
    to the range before the loss diverges."""
    lrs, losses = _finite(lrs, losses)
    fig = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="C0", alpha=0.35, lw=1, label="loss of each step")
    if len(losses) > window:
        centre, smoothed = _smoothed(lrs, losses, window)
        ax.plot(centre, smoothed, color="C0", lw=2, label=f"smoothed ({window} steps)")
        lowest = int(np.argmin(smoothed))
        ax.axvline(
            centre[lowest], color="grey", ls=":", label=f"lowest smoothed loss at {centre[lowest]:.2g}"
        )
        top, bottom = float(smoothed[: lowest + 1].max()), float(smoothed[lowest])
        margin = 0.25 * (top - bottom) + 1e-6
        ax.set_ylim(min(bottom, float(losses.min())) - margin, top + margin)  # the divergence is clipped away
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", lw=2, label=f"suggested {suggestion:.2g} (steepest descent)")
    ax.set_xscale("log")
    ax.set(
        xlabel="learning rate",
        ylabel="training loss",
        title=f"learning-rate finder: {len(lrs)} steps, {lrs.min():.1g} to {lrs.max():.1g}",
    )
    ax.legend(loc="lower left", fontsize=8)
    return fig


class LearningRateReport(LearningRateFinder):
    """Sweep learning rates at the start of ``fit``, save the plot and the suggestion, and stop.

    Args:
        min_lr: lowest rate tried.
        max_lr: highest rate tried.
        num_training_steps: steps of the sweep.
        mode: ``exponential`` or ``linear`` spacing of the rates.
    """

    def __init__(
        self,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
    ) -> None:
        super().__init__(
            min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, mode=mode, update_attr=False
        )
        self._early_exit = True
        self._raw_losses: list[float] = []

    def lr_find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Sweep, recording each step's own loss (the finder's smoothed loss starts biased low: an
        average begun at 0), then report."""
        self._raw_losses = []
        step = pl_module.training_step

        def recorded(*args, **kwargs):
            loss = step(*args, **kwargs)
            self._raw_losses.append(float(loss.detach()))
            return loss

        pl_module.training_step = recorded  # the sweep runs with its own callbacks only: this sees every step
        bar = lightning_lr_finder.tqdm
        if (
            trainer.progress_bar_callback is None
        ):  # no bar in this run (a log file): none for the sweep either
            lightning_lr_finder.tqdm = functools.partial(bar, disable=True)
        try:
            super().lr_find(trainer, pl_module)
        finally:
            lightning_lr_finder.tqdm = bar
            del pl_module.training_step
            if self.optimal_lr is not None and trainer.is_global_zero:
                self._report(trainer)

    def _report(self, trainer: pl.Trainer) -> None:
        # the first logger's folder: trainer.log_dir would be a collective, and only rank 0 is here
        folder = Path((trainer.loggers[0].log_dir if trainer.loggers else None) or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        lrs = np.array(self.optimal_lr.results["lr"])
        losses = np.array(self._raw_losses[: len(lrs)])
        lrs = lrs[: len(losses)]
        suggestion = suggest_learning_rate(lrs, losses)
        write_json_atomic(
            folder / "lr_finder.json",
            {"suggestion": suggestion, "rule": RULE, "lr": lrs.tolist(), "loss": losses.tolist()},
            indent=1,
        )
        fig = lr_finder_figure(lrs, losses, suggestion)
        save_png(fig, folder / "lr_finder.png")
        log_figures(trainer, {"lr_finder": fig}, trainer.current_epoch)
        if suggestion is None:
            log.warning(
                "learning-rate finder: the loss never fell in [%g, %g]; no suggestion (plot: %s)",
                lrs.min(),
                lrs.max(),
                folder / "lr_finder.png",
            )
        else:
            log.info(
                "learning-rate finder: suggested lr %.3g, %s; set it with "
                "--model.optimizer.init_args.lr=%.3g (plot: %s)",
                suggestion,
                RULE,
                suggestion,
                folder / "lr_finder.png",
            )
