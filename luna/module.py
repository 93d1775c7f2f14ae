"""LunaClassifier: the LightningModule (network, loss, metrics, figures, prediction, fine-tuning)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn

from luna.augment import Augmentation, augment, center_crop, flip
from luna.figures import confusion_figure, log_figures, mistakes_figure, pr_curve_figure, reliability_figure
from luna.metrics import StageMetrics
from luna.model import LunaModel, book_state_dict

log = logging.getLogger(__name__)

Schedule = Literal["constant", "one_cycle", "cosine"]


def trainable_units(network: nn.Module) -> list[nn.Module]:
    """Top-level children that hold parameters, input side first (LunaModel: tail, block1-4, head)."""
    return [child for child in network.children() if any(True for _ in child.parameters())]


def load_weights(network: nn.Module, path: str | Path) -> None:
    """Initialise ``network`` from a luna ``.ckpt`` (Lightning) or a book ``{'model_state': ...}`` file.

    Lightning checkpoints hold pickled hyperparameters, so they are loaded with
    ``weights_only=False``: only point this at checkpoints you trust.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state = {k.removeprefix("network."): v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}
    else:
        state = book_state_dict(checkpoint, path)
    network.load_state_dict(state)
    log.info("initialised the network from %s", path)


class LunaClassifier(pl.LightningModule):
    """Nodule-candidate classification with any 3D network.

    Args:
        network: maps ``[B, 1, I, R, C]`` crops to logits ``[B, 2]`` (or ``(logits, probs)`` as
            LunaModel does). None builds ``LunaModel(width_irc=width_irc)``; a MONAI
            ``DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)`` works as well.
        optimizer: a callable ``params -> Optimizer``; None is the book's SGD (lr 1e-3, momentum 0.99).
        lr_schedule: ``constant``, ``one_cycle`` (peak = the optimizer's lr) or ``cosine`` (decay to
            0), stepped every batch over ``trainer.estimated_stepping_batches``.
        width_irc: the crop the network sees; larger (context) crops from the DataModule are cut
            or augmented down to it on the device.
        augmentation: random training transforms, applied to the batch on the device.
        tta_flips: test-time augmentation for validate/test/predict: the probability is the mean
            over these flips (each a list of axes, 0 = I, 1 = R, 2 = C; ``[]`` is no flip). None or
            an empty list: no TTA.
        mixup_alpha: mixup of training crops with Beta(alpha, alpha) weights; 0 disables it.
        label_smoothing: cross-entropy label smoothing epsilon for training.
        channels_last: run the network on ``channels_last_3d`` tensors (2.6x faster on CPU here).
        init_checkpoint: start from the network weights of a luna ``.ckpt`` or a book checkpoint.
        finetune_depth: train only the last K parameterised units of the network (LunaModel:
            1 = head only, 2 = block4 + head, ... as the book's ``--finetune-depth``); None trains all.
        lr_decay_per_unit: discriminative learning rates: each unit's rate is this factor times
            the rate of the unit after it (the head gets the optimizer's rate); 1.0 disables it.
        mistakes_shown: confident false positives and negatives shown in the validation montage.
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Schedule = "constant",
        width_irc: tuple[int, int, int] = (32, 48, 48),
        augmentation: Augmentation = Augmentation(),
        tta_flips: list[list[int]] | None = None,
        mixup_alpha: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        init_checkpoint: str | None = None,
        finetune_depth: int | None = None,
        lr_decay_per_unit: float = 1.0,
        mistakes_shown: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.network = network if network is not None else LunaModel(width_irc=width_irc)
        self.optimizer_factory = optimizer
        self.width_irc = tuple(width_irc)
        self.augmentation = augmentation
        self.tta_flips = [tuple(f) for f in tta_flips] if tta_flips else [()]
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        if init_checkpoint:
            load_weights(self.network, init_checkpoint)
        units = trainable_units(self.network)
        if finetune_depth is not None:
            if not 1 <= finetune_depth <= len(units):
                raise ValueError(f"finetune_depth={finetune_depth}: must be between 1 and {len(units)} for this network")
            for unit in units[: len(units) - finetune_depth]:
                unit.requires_grad_(False)
        slice_shape = self.width_irc[1:]
        self.train_metrics = StageMetrics("train")
        self.val_metrics = StageMetrics("val", curves=True, slice_shape=slice_shape, mistakes=mistakes_shown)
        self.test_metrics = StageMetrics("test", curves=True, slice_shape=slice_shape, mistakes=mistakes_shown)

    # ------------------------------------------------------------------ batches on the device
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Augment (training) or cut the exact model crop (otherwise), batched on the device."""
        crops, offsets = batch["crop"], batch["offset_irc"]
        if self.trainer is not None and self.trainer.training:
            crops = augment(crops, offsets, self.width_irc, self.augmentation)
        else:
            crops = center_crop(crops, offsets, self.width_irc)
        if self.hparams.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last_3d)
        return {**batch, "crop": crops}

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 2]``."""
        out = self.network(crops)
        return out[0] if isinstance(out, (tuple, list)) else out

    def nodule_probability(self, crops: torch.Tensor) -> torch.Tensor:
        """P(nodule) ``[B]``, averaged over the test-time flips."""
        probabilities = [F.softmax(self(flip(crops, dims)), dim=1)[:, 1] for dims in self.tta_flips]
        return torch.stack(probabilities).mean(0)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        crops, labels = batch["crop"], batch["label"]
        smoothing = self.hparams.label_smoothing
        if self.hparams.mixup_alpha > 0:
            weight = torch.distributions.Beta(self.hparams.mixup_alpha, self.hparams.mixup_alpha).sample(labels.shape)
            weight = torch.maximum(weight, 1 - weight).to(crops.device)  # the first sample dominates: its label is reported
            partner = torch.randperm(len(labels), device=crops.device)
            shaped = weight.view(-1, *[1] * (crops.ndim - 1))
            crops = shaped * crops + (1 - shaped) * crops[partner]
            logits = self(crops)
            losses = weight * F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing) + (
                1 - weight
            ) * F.cross_entropy(logits, labels[partner], reduction="none", label_smoothing=smoothing)
        else:
            logits = self(crops)
            losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing)
        self.train_metrics.update(F.softmax(logits.detach(), dim=1)[:, 1], labels, losses)
        loss = losses.mean()
        self.log("train/loss_step", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: dict, metrics: StageMetrics) -> None:
        crops, labels = batch["crop"], batch["label"]
        probability = self.nodule_probability(crops)
        true_class = torch.where(labels == 1, probability, 1 - probability)
        losses = -torch.log(true_class.clamp_min(1e-12))
        middle = crops.shape[2] // 2
        metrics.update(probability, labels, losses, batch["index"], crops[:, 0, middle])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Each candidate's P(nodule) with what identifies it: ``index``, ``series_uid``, ``center_xyz``."""
        return {
            "index": batch["index"],
            "series_uid": batch["series_uid"],
            "center_xyz": batch["center_xyz"],
            "probability": self.nodule_probability(batch["crop"]),
        }

    # ------------------------------------------------------------------ epoch ends
    def on_train_start(self) -> None:
        """Start validation metrics clean (the sanity check must not leak in); record the global batch."""
        self.val_metrics.reset()
        loader = self.trainer.train_dataloader
        batch_size = getattr(loader, "batch_size", None)
        if batch_size:
            world = self.trainer.world_size
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"world_size": world, "global_batch_size": world * batch_size})
            log.info("global batch: %d processes x %d = %d samples per step (learning rate not rescaled)",
                     world, batch_size, world * batch_size)

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute_scalars(), sync_dist=True)  # already equal on all ranks
        self.train_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._end_evaluation(self.test_metrics)

    def _end_evaluation(self, metrics: StageMetrics) -> None:
        if self.trainer.sanity_checking:
            metrics.reset()
            return
        scalars = metrics.compute_scalars()  # collective: every rank computes, then all log the same values
        curves = metrics.compute_curves()
        self.log_dict(scalars, sync_dist=True)  # already equal on all ranks: the mean leaves them as they are
        if self.trainer.is_global_zero and self.trainer.loggers:
            datamodule = getattr(self.trainer, "datamodule", None)
            describe = (lambda k: datamodule.candidate(k).series_uid[-8:]) if hasattr(datamodule, "candidate") else str
            stage = metrics.stage
            log_figures(self.trainer, {
                f"{stage}/pr_curve": pr_curve_figure(curves["pr_curve"]),
                f"{stage}/confusion_matrix": confusion_figure(curves["confusion"]),
                f"{stage}/reliability": reliability_figure(curves["reliability"]),
                f"{stage}/confident_mistakes": mistakes_figure(curves["mistakes"], describe),
            })
        metrics.reset()

    # ------------------------------------------------------------------ optimisation
    def _parameter_groups(self) -> list[dict]:
        """One group per trainable unit, with ``lr_scale`` for discriminative learning rates."""
        decay = self.hparams.lr_decay_per_unit
        if decay == 1.0:
            return [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr_scale": 1.0}]
        units = trainable_units(self.network)
        groups = []
        for depth, unit in enumerate(reversed(units)):
            params = [p for p in unit.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr_scale": decay**depth})
        covered = {id(p) for unit in units for p in unit.parameters()}
        rest = [p for p in self.network.parameters() if p.requires_grad and id(p) not in covered]
        if rest:
            groups.append({"params": rest, "lr_scale": 1.0})
        return groups

    def configure_optimizers(self):
        groups = self._parameter_groups()
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.99)
        else:
            optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        schedule = self.hparams.lr_schedule
        if schedule == "constant":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if schedule == "one_cycle":
            peaks = [group["lr"] for group in optimizer.param_groups]
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
