"""Checkpoints of a run: the best epoch by a monitored metric, and ``last.ckpt`` after every epoch.

Lightning's ``ModelCheckpoint(save_last=True)`` with a monitor rewrites ``last.ckpt`` only when
a top-k checkpoint is written in the same step (Lightning 2.6): a run whose monitored metric stops
improving keeps an old ``last.ckpt``, and resuming from it silently loses every epoch after the
best one. ``RunCheckpoint`` writes ``last.ckpt`` at the end of every epoch, whatever the monitor
does, so ``--ckpt_path=.../last.ckpt`` resumes from the true last epoch.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest finished epoch.

    Takes the arguments of ``ModelCheckpoint``; only the rule for ``last.ckpt`` differs.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

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
