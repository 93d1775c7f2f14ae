"""The learning-rate schedules a LightningModule offers, stepped every batch: one place for the
classifier and the segmentation."""

from __future__ import annotations

from typing import Literal

import torch

Schedule = Literal["constant", "one_cycle", "cosine"]


def with_schedule(
    optimizer: torch.optim.Optimizer, schedule: Schedule, steps: int
) -> dict | torch.optim.Optimizer:
    """What ``configure_optimizers`` returns for ``optimizer`` under ``schedule`` over ``steps``
    batches: ``one_cycle`` peaks at each group's lr, ``cosine`` decays from it to zero."""
    if schedule == "constant":
        return optimizer
    if schedule == "one_cycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
