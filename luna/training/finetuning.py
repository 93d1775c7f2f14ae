"""Fine-tuning: starting from saved weights, freezing by depth, discriminative learning rates, and
progressive unfreezing (fast.ai's recipe, the book's ``--finetune-depth``).

A network's *units* are its top-level children that hold parameters, input side first (LunaModel:
tail batchnorm, block1-4, head). Depth counts units from the head: depth 1 is the head alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from luna.models.luna_model import book_state_dict
from luna.training.checkpoints import read_checkpoint

log = logging.getLogger(__name__)


def trainable_units(network: nn.Module) -> list[nn.Module]:
    """Top-level children that hold parameters, input side first."""
    return [child for child in network.children() if any(True for _ in child.parameters())]


def freeze_all_but_last(network: nn.Module, depth: int) -> None:
    """Train only the last ``depth`` units (1 = the head only), as the book's ``--finetune-depth``."""
    units = trainable_units(network)
    if not 1 <= depth <= len(units):
        raise ValueError(f"finetune_depth={depth}: must be between 1 and {len(units)} for this network")
    for unit in units[: len(units) - depth]:
        unit.requires_grad_(False)


def parameter_groups(network: nn.Module, lr_decay_per_unit: float = 1.0) -> list[dict]:
    """Optimizer parameter groups with an ``lr_scale`` each, for discriminative learning rates.

    With ``lr_decay_per_unit = d``, the unit at depth k (the head is 0) trains at ``d**k`` times
    the optimizer's rate; parameters outside the units (if any) at the full rate. ``d = 1`` gives
    one group. Frozen parameters are left out.
    """
    if lr_decay_per_unit == 1.0:
        return [{"params": [p for p in network.parameters() if p.requires_grad], "lr_scale": 1.0}]
    units = trainable_units(network)
    groups = []
    for depth, unit in enumerate(reversed(units)):
        params = [p for p in unit.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr_scale": lr_decay_per_unit**depth})
    covered = {id(p) for unit in units for p in unit.parameters()}
    rest = [p for p in network.parameters() if p.requires_grad and id(p) not in covered]
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0})
    return groups


def load_network_weights(network: nn.Module, path: str | Path, trust: bool = False) -> None:
    """Initialise ``network`` from a luna ``.ckpt`` (Lightning) or a book ``{'model_state': ...}`` file.

    The file is read with ``weights_only=True`` (tensors, numbers, strings and luna's own
    configuration dataclasses only): unpickling anything else can run code. Only the network's
    weights are taken (the ``network.*`` entries of a Lightning checkpoint).

    Raises:
        CheckpointError: the file is missing, empty, damaged or not a checkpoint.
        UntrustedCheckpointError: the file needs full unpickling; pass ``trust=True``
            (``--model.trust_checkpoint=true``) only for files you trust.
    """
    checkpoint = read_checkpoint(path, trust)
    if "state_dict" in checkpoint:
        state = {
            k.removeprefix("network."): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("network.")
        }
    else:
        state = book_state_dict(checkpoint, path)
    network.load_state_dict(state)
    log.info("initialised the network from %s", path)


class ProgressiveUnfreezing(BaseFinetuning):
    """Unfreeze ``network`` units one by one during training, each slower than the one after it.

    Start from a checkpoint (``LunaClassifier(init_checkpoint=...)``), train the last units first,
    then unfreeze one more unit towards the input every ``epochs_per_unit`` epochs.

    Args:
        trainable_at_start: units (counted from the head) trained from the first epoch.
        epochs_per_unit: epochs between two unfreezings.
        lr_decay_per_unit: a newly unfrozen unit at depth d trains at ``head_lr * decay**d``.
    """

    def __init__(
        self, trainable_at_start: int = 1, epochs_per_unit: int = 1, lr_decay_per_unit: float = 0.5
    ) -> None:
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
