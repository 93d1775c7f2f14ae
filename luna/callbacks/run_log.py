"""What a run tells its user: the global batch at the start, one line per validation, a summary at
the end (best epoch and its metrics, the checkpoint paths, the run folder, how to open
TensorBoard), and the global batch as a hyperparameter for the loggers."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from luna.metrics.stage import evaluation_of

log = logging.getLogger(__name__)

# (metric, label) in the order a line shows them; absent metrics are left out
SHOWN = (
    ("dice", "Dice"),
    ("nodule_recall", "nodule recall"),
    ("candidates_per_scan", "candidates/scan"),
    ("f1", "F1"),
    ("auroc", "AUROC"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("cpm", "CPM"),
    ("f1_best", "best-threshold F1"),
    ("loss", "loss"),
)


def describe_metrics(metrics: dict[str, float], stage: str, threshold: float | None) -> str:
    """``F1 0.818 (at P >= 0.5) | AUROC 0.948 | ...`` for one stage's logged values."""
    parts = []
    for name, label in SHOWN:
        value = metrics.get(f"{stage}/{name}")
        if value is None:
            continue
        text = f"{label} {float(value):.3f}"
        if name == "dice" and threshold is not None:
            text += f" (at P > {threshold:g})"
        if name == "f1":
            text += f" (at P >= {threshold:g})" if threshold is not None else " (macro)"
        if name == "f1_best":
            text += f" at {float(metrics[f'{stage}/f1_best_threshold']):.2f}, optimistic"
        parts.append(text)
    return " | ".join(parts)


def _threshold(pl_module: pl.LightningModule, stage: str) -> float | None:
    """The binary decision threshold of the module's last ``stage`` evaluation, or None for more classes."""
    outcome = evaluation_of(pl_module, stage)
    return outcome.threshold if outcome is not None else None


class RunLog(pl.Callback):
    """Console lines of a run (global rank 0), and ``world_size``/``global_batch_size`` as hyperparameters.

    Under DDP every process draws ``batch_size`` samples per step, so the optimizer sees
    ``world_size x batch_size``; luna never rescales the learning rate for it, so the number is
    recorded where the run's other settings are.
    """

    def __init__(self) -> None:
        self.history: dict[int, dict[str, float]] = {}
        self._pending: int | None = None  # an epoch whose line waits for its training loss
        self._started = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if not batch_size:
            return
        world = trainer.world_size
        for logger in trainer.loggers:
            logger.log_hyperparams({"world_size": world, "global_batch_size": world * batch_size})
        log.info(
            "global batch: %d processes x %d = %d samples per step (learning rate not rescaled)",
            world,
            batch_size,
            world * batch_size,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if (
            trainer.fast_dev_run
        ):  # a batch of one class: torchmetrics warns that AUROC is undefined, and it is
            warnings.filterwarnings("ignore", message=r".*No (negative|positive) samples in targets.*")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the epoch's validation (its line is printed once the epoch's training loss is logged);
        outside of fit, print it with where it was written."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if trainer.state.fn == "fit":
            self.history[trainer.current_epoch] = metrics
            self._pending = trainer.current_epoch
            return
        if trainer.fast_dev_run:
            log.info("validation (debug run: one batch; its metrics mean nothing)")
            return
        written = f"; written to {trainer.loggers[0].log_dir}" if trainer.loggers else ""
        log.info(
            "validation of %s: %s%s",
            trainer.ckpt_path or "the given weights",
            describe_metrics(metrics, "val", _threshold(pl_module, "val")),
            written,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_epoch(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_epoch(trainer, pl_module)

    def _print_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The line of the last finished epoch: its validation and its own training loss (logged at
        the end of the epoch, after validation ran)."""
        epoch, self._pending = self._pending, None
        if epoch is None or not trainer.is_global_zero:
            return
        if trainer.fast_dev_run:
            log.info(
                "epoch %d: debug run (one batch of training and validation): its metrics mean nothing", epoch
            )
            return
        loss = trainer.callback_metrics.get("train/loss")
        train = f" | train loss {float(loss):.3f}" if loss is not None else ""
        log.info(
            "epoch %d/%d: val %s%s",
            epoch,
            trainer.max_epochs - 1,
            describe_metrics(self.history[epoch], "val", _threshold(pl_module, "val")),
            train,
        )

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            threshold = _threshold(pl_module, "test")
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
            log.info(
                "test of %s: %s",
                trainer.ckpt_path or "the given weights",
                describe_metrics(metrics, "test", threshold),
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.fast_dev_run:
            return
        elapsed = time.monotonic() - self._started
        duration = f"{elapsed:.1f} s" if elapsed < 60 else f"{int(elapsed) // 60} min {int(elapsed) % 60} s"
        if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
            why = f"max_steps={trainer.max_steps} reached"
        elif trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
            why = f"max_epochs={trainer.max_epochs} reached"
        else:
            why = "stopped early"
        lines = [
            f"training finished ({why}): {trainer.current_epoch} epochs, {trainer.global_step} steps in "
            f"{duration}"
        ]
        checkpoint = trainer.checkpoint_callback
        threshold = _threshold(pl_module, "val")
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor and self.history:
            scored = {
                epoch: m[checkpoint.monitor] for epoch, m in self.history.items() if checkpoint.monitor in m
            }
            if scored:
                pick = max if checkpoint.mode == "max" else min
                best = pick(scored, key=scored.get)
                lines.append(
                    f"best epoch {best} by {checkpoint.monitor} {scored[best]:.3f}: "
                    f"{describe_metrics(self.history[best], 'val', threshold)}"
                )
        if isinstance(checkpoint, ModelCheckpoint):
            if checkpoint.best_model_path:
                lines.append(f"best checkpoint: {checkpoint.best_model_path}")
            if checkpoint.last_model_path:
                lines.append(f"last checkpoint: {checkpoint.last_model_path}")
        if (
            trainer.loggers
        ):  # the first logger's folder (trainer.log_dir would be a collective: rank 0 is alone here)
            run = Path(trainer.loggers[0].log_dir or trainer.default_root_dir)
            lines.append(f"run folder: {run}")
            if any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
                lines.append(f"TensorBoard: tensorboard --logdir {run.parent}")
        log.info("\n".join(lines))
