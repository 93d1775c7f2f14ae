"""Stopping a hopeless sweep trial early: the monitored metric goes to Optuna after every
validation, and the run stops when Optuna's pruner says so.

Under DDP only global rank 0 holds the Optuna trial; it decides and tells the other ranks, so
every rank stops at the same epoch.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl


class MetricNotLogged(ValueError):
    """The sweep's metric is not logged by the run: every trial of the sweep would fail alike."""


class TrialPruning(pl.Callback):
    """Report ``monitor`` to an Optuna trial after each validation and stop the run when it is pruned.

    Args:
        trial: the ``optuna.Trial`` of this run (None on ranks other than 0).
        monitor: the logged metric the study optimises, e.g. ``val/cpm``.
    """

    def __init__(self, trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned = False
        self.reported: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise MetricNotLogged(
                    f"the sweep's metric {self.monitor} was not logged by this run; choose one of "
                    f"{sorted(trainer.callback_metrics)} as metric in the search file"
                )
            value = float(value)
            self.reported.append(value)
            if math.isfinite(value):
                self.trial.report(value, step=trainer.current_epoch)
                prune = self.trial.should_prune()
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned = True
            trainer.should_stop = True
