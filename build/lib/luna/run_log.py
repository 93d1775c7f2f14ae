"""What a run records about itself beyond metrics: the global batch (devices x batch size)."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class RunLog(pl.Callback):
    """Logs ``world_size`` and ``global_batch_size`` as hyperparameters when training starts.

    Under DDP every process draws ``batch_size`` samples per step, so the optimizer sees
    ``world_size x batch_size``; luna never rescales the learning rate for it, so the number is
    recorded where the run's other settings are.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if not batch_size:
            return
        world = trainer.world_size
        for logger in trainer.loggers:
            logger.log_hyperparams({"world_size": world, "global_batch_size": world * batch_size})
        log.info("global batch: %d processes x %d = %d samples per step (learning rate not rescaled)",
                 world, batch_size, world * batch_size)
