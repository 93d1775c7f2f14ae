"""SegmentationModule: the LightningModule of the segmentation stage (network, loss, steps).

It trains a segmentation network on patches, and validates, tests and predicts on whole volumes
as ``luna.detect`` does: a Gaussian-weighted sliding window (``luna.segmentation.inference``), a
probability threshold, connected components with their centres in millimetres
(``luna.segmentation.candidates``). Validation scores each volume's voxels (Dice, precision,
recall) and its nodules: the share that some candidate hits (``val/nodule_recall``) and how many
candidates it took (``val/candidates_per_scan``), exact under DDP (``luna.metrics.segmentation``).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from monai.losses import DiceCELoss
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from luna.data.volume import Geometry
from luna.metrics.segmentation import SegmentationMetrics, SegmentationOutcome
from luna.segmentation.candidates import group_components, nodules_hit
from luna.segmentation.inference import normalised, probability_map
from luna.segmentation.patches import PatchBatch
from luna.training.checkpoints import TASK_KEY
from luna.training.inputs import CropInputs
from luna.training.schedules import Schedule, with_schedule

log = logging.getLogger(__name__)

Loss = Literal["dice_bce", "recall_dice"]
EXAMPLES = 4  # validation volumes kept (on global rank 0) for the overlay figure


FOREGROUND_PRIOR = 0.01  # about the share of nodule voxels in a patch centred near a nodule


def default_unet() -> nn.Module:
    """MONAI's residual 3D U-Net: 16-32-64-128 channels, three 2x downsamplings, one residual unit
    a level (600k parameters; 3 M voxels/s in training on 2 CPU cores).

    Its output starts at the foreground prior (RetinaNet's initialisation): the bias of the final
    convolution is ``logit(0.01)``, so the first steps do not spend themselves learning that most
    voxels are background (from 0.5 everywhere, the cross-entropy of 300,000 background voxels
    drowns the few nodule voxels, and Adam moves a bias by about its learning rate a step).
    """
    from monai.networks.nets import UNet

    network = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
    )
    output = [module for module in network.modules() if isinstance(module, nn.Conv3d)][
        -1
    ]  # the final convolution
    nn.init.constant_(output.bias, math.log(FOREGROUND_PRIOR / (1 - FOREGROUND_PRIOR)))
    return network


def recall_dice_loss(
    logits: torch.Tensor, mask: torch.Tensor, false_negative_weight: float = 8.0
) -> torch.Tensor:
    """The book's chapter 13 loss: soft Dice, plus a Dice over the mask's voxels alone weighted 8x,
    which punishes a missed nodule voxel far more than a false alarm (candidates are cheap, the
    classifier sorts them; a missed nodule is lost)."""
    probability = torch.sigmoid(logits)

    def dice(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return 1 - (2 * (predicted * truth).sum() + 1) / (predicted.sum() + truth.sum() + 1)

    return dice(probability, mask) + false_negative_weight * dice(probability * mask, mask)


class SegmentationModule(pl.LightningModule):
    """Segmentation of nodules in 3D volumes, trained on patches and evaluated on whole volumes.

    Args:
        network: maps ``[B, 1, I, R, C]`` (intensities scaled to [-1, 1]) to one channel of logits of
            the same size. None: MONAI's 3D ``UNet`` (``default_unet``); any network by class_path,
            e.g. ``monai.networks.nets.BasicUNet`` with ``spatial_dims: 3, in_channels: 1,
            out_channels: 1``, or ``luna.models.SliceContextNet`` (2D slices with context, the book's
            chapter 13).
        optimizer: ``params -> Optimizer``; None: Adam (lr 1e-3), as the book's segmentation.
        lr_schedule: ``constant``, ``one_cycle`` or ``cosine``, stepped every batch.
        loss: ``dice_bce`` (Dice + binary cross-entropy over the batch, as nnU-Net) or
            ``recall_dice`` (the book's: Dice + 8 x the Dice of the mask's voxels).
        threshold: a voxel with a probability above it is a nodule voxel (masks and candidates).
        min_volume_mm3: candidates smaller than this are dropped (0: none is).
        overlap: of the sliding windows on whole volumes.
        windows_per_batch: sliding windows run through the network at once.
        flips: augment training patches with random flips of every axis and swaps of the rows and
            columns (exact: the same for the image and its mask).
        input_widths_irc: the training patch, which is the sliding window (linked from the data).
        input_spacings_mm, input_intensity: the stored grid's spacing and the intensities (linked
            from the data; recorded in checkpoints, checked against the data, exported).
        num_classes, class_names: background and nodule (linked from the data).
        compile: run the network through ``torch.compile`` (not saved with the weights).
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Schedule = "constant",
        loss: Loss = "dice_bce",
        threshold: float = 0.5,
        min_volume_mm3: float = 0.0,
        overlap: float = 0.25,
        windows_per_batch: int = 4,
        flips: bool = True,
        input_widths_irc: list[list[int]] | None = None,
        input_spacings_mm: list[list[float] | None] | None = None,
        input_intensity: list[float] | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold}: must lie strictly between 0 and 1")
        if loss not in ("dice_bce", "recall_dice"):
            raise ValueError(f"loss={loss!r}: expected 'dice_bce' or 'recall_dice'")
        self.save_hyperparameters(ignore=["network", "optimizer", "compile"])
        self.network = network if network is not None else default_unet()
        self.optimizer_factory = optimizer
        self.window_irc = tuple((input_widths_irc or [[48, 64, 64]])[0])
        self.intensity = input_intensity or [-1000.0, 1000.0, 1.0]
        self.compile = compile
        self.dice_bce = DiceCELoss(sigmoid=True, batch=False)
        self.val_metrics, self.test_metrics = SegmentationMetrics(), SegmentationMetrics()
        self.evaluations: dict[str, SegmentationOutcome] = {}
        self._examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def crop_inputs(self) -> CropInputs:
        """The network's input: the window, the stored grid's spacing and the intensities."""
        return CropInputs.of([self.window_irc], self.hparams.input_spacings_mm, self.hparams.input_intensity)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self._runnable_network()(image)

    def _runnable_network(self) -> nn.Module:
        if not self.compile:
            return self.network
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = torch.compile(self.network)
            object.__setattr__(
                self, "_compiled", compiled
            )  # off the module tree: checkpoints keep plain keys
        return compiled

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "recall_dice":
            return recall_dice_loss(logits, mask)
        return self.dice_bce(logits, mask)

    # ------------------------------------------------------------------ batches
    def on_after_batch_transfer(self, batch: PatchBatch, dataloader_idx: int) -> PatchBatch:
        """Stored int16 -> [-1, 1] on the device; training patches flipped and transposed at random."""
        if not isinstance(batch, dict):
            return batch
        image, mask = normalised(batch["image"], self.intensity), batch["mask"].float()
        if self.hparams.flips and self._training():
            image, mask = _flip_pairs(image, mask)
        return {**batch, "image": image, "mask": mask}

    def _training(self) -> bool:
        try:
            return self.trainer.training
        except RuntimeError:  # not attached to a Trainer
            return False

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: PatchBatch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {float(loss)} at step {self.global_step}: lower the "
                "learning rate or check the data"
            )
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"])
        )
        return loss

    def _segment(self, batch: PatchBatch) -> tuple[torch.Tensor, Geometry, np.ndarray]:
        """The volume's probability map, its grid and its findings (``[n, 4]``)."""
        probability = probability_map(
            self._runnable_network(),
            batch["image"],
            self.window_irc,
            self.hparams.overlap,
            self.hparams.windows_per_batch,
        )
        geometry = Geometry(
            tuple(batch["image"].shape[2:]),
            batch["origin_xyz"][0].cpu().numpy(),
            batch["spacing_xyz"][0].cpu().numpy(),
            batch["direction"][0].cpu().numpy(),
        )
        return probability, geometry, batch["findings"][0].cpu().numpy().reshape(-1, 4)

    def _evaluate(self, batch: PatchBatch, metrics: SegmentationMetrics, stage: str) -> None:
        probability, geometry, findings = self._segment(batch)
        candidates = group_components(
            probability.cpu().numpy(), geometry, self.hparams.threshold, self.hparams.min_volume_mm3
        )
        hit = nodules_hit(candidates.center_xyz, findings)
        mask = batch["mask"][0, 0]
        metrics.update(
            probability > self.hparams.threshold, mask > 0, len(findings), int(hit.sum()), len(candidates)
        )
        logits = torch.logit(probability.clamp(1e-6, 1 - 1e-6))[None, None]
        self.log(f"{stage}/loss", self.loss(logits, batch["mask"]), batch_size=1, sync_dist=True)
        if self.trainer.is_global_zero and len(self._examples) < EXAMPLES:
            self._examples.append(_example(batch["image"][0, 0], mask, probability, geometry, findings))

    def validation_step(self, batch: PatchBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: PatchBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch: PatchBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """The volume's candidates: their image number, centres (mm) and highest probability."""
        probability, geometry, _ = self._segment(batch)
        candidates = group_components(
            probability.cpu().numpy(), geometry, self.hparams.threshold, self.hparams.min_volume_mm3
        )
        image = int(batch["index"][0])
        return {
            "image": np.full(len(candidates), image),
            "center_xyz": candidates.center_xyz,
            "probabilities": np.column_stack([1 - candidates.probability, candidates.probability]),
            "volumes": np.array([image]),
        }  # predicted, also when it has no candidate

    # ------------------------------------------------------------------ epoch ends
    def on_validation_epoch_start(self) -> None:
        self._examples = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation(self.test_metrics, "test")

    def _end_evaluation(self, metrics: SegmentationMetrics, stage: str) -> None:
        scalars = {f"{stage}/{name}": value for name, value in metrics.compute().items()}  # collective
        metrics.reset()
        if self.trainer.sanity_checking:
            return
        self.log_dict(scalars, sync_dist=True)  # equal on every rank already
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        epoch = self.current_epoch if fitting else int(getattr(self, "_checkpoint_epoch", 0))
        self.evaluations[stage] = SegmentationOutcome(
            stage, epoch, scalars, self.hparams.threshold, self._examples
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = "segmentation"  # what the checkpoint is (luna.training.checkpoints.task_of)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._checkpoint_epoch = int(checkpoint.get("epoch", 0))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        parameters = self.network.parameters()
        optimizer = (
            torch.optim.Adam(parameters, lr=1e-3)
            if self.optimizer_factory is None
            else self.optimizer_factory(parameters)
        )
        schedule = self.hparams.lr_schedule
        steps = int(self.trainer.estimated_stepping_batches) if schedule != "constant" else 0
        return with_schedule(optimizer, schedule, steps)


def _flip_pairs(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample flipped along random axes, and its rows and columns swapped at random when they
    are as many (a square patch): exact, and the same for the image and the mask."""
    batch = image.shape[0]
    flips = torch.rand(batch, 3, device=image.device) < 0.5
    for axis in range(3):
        chosen = flips[:, axis].view(-1, 1, 1, 1, 1)
        image = torch.where(chosen, image.flip(2 + axis), image)
        mask = torch.where(chosen, mask.flip(2 + axis), mask)
    if image.shape[3] == image.shape[4]:
        swap = (torch.rand(batch, device=image.device) < 0.5).view(-1, 1, 1, 1, 1)
        image = torch.where(swap, image.transpose(3, 4), image)
        mask = torch.where(swap, mask.transpose(3, 4), mask)
    return image, mask


def _example(
    image: torch.Tensor,
    mask: torch.Tensor,
    probability: torch.Tensor,
    geometry: Geometry,
    findings: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The axial slice through the volume's largest finding (its most probable voxel when it has none)."""
    if len(findings):
        largest = findings[int(np.argmax(findings[:, 3]))]
        irc, _ = geometry.inside(largest[None, :3])
        i = int(np.clip(irc[0, 0], 0, image.shape[0] - 1))
    else:
        i = int(torch.argmax(probability.amax(dim=(1, 2))))
    return image[i].cpu().numpy(), mask[i].cpu().numpy(), probability[i].cpu().numpy()
