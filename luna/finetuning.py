"""Progressive unfreezing with discriminative learning rates (fast.ai's recipe, the book's depth).

Start from a checkpoint (``LunaClassifier(init_checkpoint=...)``), train the head (and the last
few units) first, then unfreeze one more unit, from the head towards the input, every few epochs,
each with a learning rate ``lr_decay_per_unit`` times that of the unit after it.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.optim import Optimizer

from luna.module import trainable_units

log = logging.getLogger(__name__)


class ProgressiveUnfreezing(BaseFinetuning):
    """Unfreeze ``network`` units one by one during training.

    Args:
        trainable_at_start: units (counted from the head) trained from the first epoch.
        epochs_per_unit: epochs between two unfreezings.
        lr_decay_per_unit: a newly unfrozen unit at depth d trains at ``head_lr * decay**d``.
    """

    def __init__(self, trainable_at_start: int = 1, epochs_per_unit: int = 1, lr_decay_per_unit: float = 0.5) -> None:
        super().__init__()
        if trainable_at_start < 1 or epochs_per_unit < 1:
            raise ValueError("trainable_at_start and epochs_per_unit must be at least 1")
        self.trainable_at_start = trainable_at_start
        self.epochs_per_unit = epochs_per_unit
        self.lr_decay_per_unit = lr_decay_per_unit

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        units = trainable_units(pl_module.network)
        self.freeze(units[: max(len(units) - self.trainable_at_start, 0)], train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch == 0 or epoch % self.epochs_per_unit:
            return
        units = trainable_units(pl_module.network)
        depth = self.trainable_at_start + epoch // self.epochs_per_unit - 1
        if depth >= len(units):
            return
        head_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        lr = head_lr * self.lr_decay_per_unit**depth
        self.unfreeze_and_add_param_group(units[len(units) - 1 - depth], optimizer, lr=lr, train_bn=True)
        log.info("epoch %d: unfroze unit %d from the head (lr %.3g)", epoch, depth, lr)
