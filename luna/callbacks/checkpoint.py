"""Checkpoints of a run: the best epoch by a monitored metric, and ``last.ckpt`` after every epoch.

Lightning's ``ModelCheckpoint(save_last=True)`` with a monitor rewrites ``last.ckpt`` only when
a top-k checkpoint is written in the same step (Lightning 2.6): a run whose monitored metric stops
improving keeps an old ``last.ckpt``, and resuming from it silently loses every epoch after the
best one. ``RunCheckpoint`` writes ``last.ckpt`` at the end of every epoch, whatever the monitor
does, so ``--ckpt_path=.../last.ckpt`` resumes from the true last epoch. A run stopped by SIGTERM
(a scheduler, ``kill``) or Ctrl-C writes ``last.ckpt`` at the step it reached, and resumes from
there exactly (see ``LunaClassifier`` and ``TrainingSampler`` for what makes it exact).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from luna.io.files import write_atomic

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written as luna writes every file: to a temporary sibling, flushed, renamed.

    Lightning's own writer goes through an fsspec transaction whose temporary file lies in the
    system's temporary folder; on another file system the final "rename" is a copy, and a disk
    that fills during it leaves a truncated checkpoint under its final name. Here the temporary
    file sits beside the checkpoint, so a full disk leaves the previous file (or none) and a
    ``DiskFullError`` naming the file, the bytes it needed and the space left. Remote paths
    (``s3://`` and the like) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda handle: handle.write(data), len(data))


class RunCheckpoint(ModelCheckpoint):
    """Checkpoints: Lightning's ModelCheckpoint, with last.ckpt always at the latest finished epoch.

    Takes the arguments of ``ModelCheckpoint``, and:

    Args:
        fallback_monitor: the metric to rank checkpoints by, with a warning, when ``monitor`` is
            never logged (val/cpm needs evaluated scans: a split_by=row run or another dataset
            has none).
    """

    def __init__(self, *args, fallback_monitor: str | None = "val/f1", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fallback_monitor = fallback_monitor

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = self._monitor_candidates(trainer)
        if (
            self.monitor
            and self.monitor not in metrics
            and self.fallback_monitor in metrics
            and not trainer.sanity_checking
        ):
            log.warning(
                "checkpoint monitor %s is not logged by this run; ranking checkpoints by %s instead",
                self.monitor,
                self.fallback_monitor,
            )
            self.monitor = self.fallback_monitor
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """SIGTERM (every process gets it from Lightning) or Ctrl-C (one process): save the true last step."""
        super().on_exception(trainer, pl_module, exception)
        stopped = isinstance(exception, SIGTERMException) or (
            isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1
        )  # a lone rank cannot save a DDP run
        if (
            not stopped
            or not self.save_last
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        log.warning(
            "stopped by %s at epoch %d, step %d: saved %s; resume with --ckpt_path=%s",
            "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C",
            trainer.current_epoch,
            trainer.global_step,
            self.last_model_path,
            self.last_model_path,
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:  # Lightning's own would write last.ckpt even for a fast_dev_run
            super().on_train_end(trainer, pl_module)

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run writes to a new run folder: that its checkpoint folder changed is expected."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed")
            super().load_state_dict(state_dict)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` unless this step was already saved (a top-k save writes it too)."""
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self._last_global_step_saved == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
