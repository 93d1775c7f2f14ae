"""LunaClassifier: the LightningModule. It holds the network, the loss and the steps.

Whatever watches a run lives in callbacks (``ValidationFigures``, ``RunLog``, ``RunCheckpoint``,
``ProgressiveUnfreezing``); metrics are ``luna.metrics.stage.StageMetrics``; augmentations and mixup are
functions of ``luna.training.augment``; fine-tuning helpers live in ``luna.training.finetuning``.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from luna.data.contract import crop_data
from luna.data.dataset import CropBatch
from luna.metrics.figures import display_window
from luna.metrics.stage import EvaluationOutcome, StageMetrics
from luna.models.luna_model import BOOK_WIDTH_IRC, LunaModel, MultiViewLunaModel, Network
from luna.models.outputs import logits_of
from luna.training.augment import Augmentation, ViewCrops, augment_views, flip, mixup, window_crop
from luna.training.checkpoints import FREQUENCIES_KEY, TASK_KEY
from luna.training.evaluation import EvaluationChoices
from luna.training.finetuning import freeze_all_but_last, load_network_weights, parameter_groups
from luna.training.inputs import CropInputs
from luna.training.schedules import Schedule, with_schedule

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


def default_network(input_widths_irc: list[tuple[int, int, int]], num_classes: int) -> nn.Module:
    """The book's LunaModel for one view, a LunaModel trunk per view for several."""
    if len(input_widths_irc) == 1:
        return LunaModel(width_irc=input_widths_irc[0], num_classes=num_classes)
    return MultiViewLunaModel(input_widths_irc, num_classes=num_classes)


def check_network_views(network: nn.Module, input_widths_irc: list[tuple[int, int, int]]) -> None:
    """A network made for several views must be given the data's views; a single-input one, one view."""
    widths = getattr(network, "input_widths_irc", None)
    if (
        widths is None and getattr(network, "width_irc", None) is not None
    ):  # LunaModel: made for one crop size
        widths = [network.width_irc]
    name = type(network).__name__
    if getattr(network, "input_widths_irc", None) is None and len(input_widths_irc) > 1:
        raise ValueError(
            f"model.network={name} takes one crop, but the data gives {len(input_widths_irc)} views of "
            "each candidate (data.extra_views): use luna.models.MultiViewLunaModel (the default), or a "
            "network that takes a tuple of crops and has an input_widths_irc attribute"
        )
    if widths is not None and [tuple(w) for w in widths] != list(input_widths_irc):
        raise ValueError(
            f"model.network={name} was made for views {[list(w) for w in widths]} but the data gives "
            f"{[list(w) for w in input_widths_irc]} (data.width_irc and data.extra_views)"
        )


class LunaClassifier(pl.LightningModule):
    """Classification of 3D crops with any 3D network (LUNA16 candidates by default).

    Args:
        network: maps ``[B, 1, I, R, C]`` crops to logits ``[B, num_classes]`` (or ``(logits,
            probs)`` as LunaModel does); with several views of each candidate, a tuple of crops.
            None builds ``LunaModel`` for one view, ``MultiViewLunaModel`` for several; any
            ``nn.Module`` is given by ``class_path`` in the config, e.g.
            ``monai.networks.nets.DenseNet121`` with ``spatial_dims: 3, in_channels: 1, out_channels: 2``.
        optimizer: a callable ``params -> Optimizer``; None is the book's SGD (lr 1e-3, momentum 0.99).
        lr_schedule: ``constant``, ``one_cycle`` (peak = the optimizer's lr) or ``cosine`` (decay to
            0), stepped every batch over ``trainer.estimated_stepping_batches``.
        input_widths_irc: the crop the network sees of each view (linked to the data by the CLI).
        input_spacings_mm: each view's voxel size in millimetres (None: the scan's own voxels), and
        input_intensity: ``[window low, window high, scale]`` of the stored values: what the crops
            were made of (linked to the data by the CLI). Saved with the weights, so that a
            checkpoint is never evaluated on other crops (``luna.training.inputs``) and an export
            cuts its input the same way.
        num_classes: classes of the data (linked to the data by the CLI); 2 for LUNA16 candidates.
        class_names: one name per class for logs and figures; default from the data.
        augmentation: random training transforms, applied to the batch on the device; None: none.
        mixup_alpha: mixup of training crops with Beta(alpha, alpha) weights; 0 disables it.
        label_smoothing: cross-entropy label smoothing epsilon for training.
        channels_last: run the network on ``channels_last_3d`` tensors (the layout oneDNN and cuDNN
            3D convolutions prefer).
        compile: run the network through ``torch.compile`` (the weights and checkpoints stay the
            plain network's). The first steps compile (a minute or more); worth it for long GPU runs.
            A choice of the command, like the precision: not saved with the weights.
        init_checkpoint: start from the network weights of a luna ``.ckpt`` or a book checkpoint.
        trust_checkpoint: allow ``init_checkpoint`` to be fully unpickled (only for trusted files).
        finetune_depth: train only the last K parameterised units of the network (LunaModel:
            1 = head only, 2 = block4 + head, ... as the book's ``--finetune-depth``); None trains all.
        lr_decay_per_unit: discriminative learning rates: each unit's rate is this factor times
            the rate of the unit after it (the head gets the optimizer's rate); 1.0 disables it.
    """

    def __init__(
        self,
        network: Network | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Schedule = "constant",
        input_widths_irc: list[list[int]] | None = None,
        input_spacings_mm: list[list[float] | None] | None = None,
        input_intensity: list[float] | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        augmentation: Augmentation | None = None,
        mixup_alpha: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
        init_checkpoint: str | None = None,
        trust_checkpoint: bool = False,
        finetune_depth: int | None = None,
        lr_decay_per_unit: float = 1.0,
    ) -> None:
        super().__init__()
        input_widths_irc = [[int(w) for w in width] for width in (input_widths_irc or [BOOK_WIDTH_IRC])]
        # plain lists: hparams.yaml stays safe-loadable; compile is the command's choice, not the checkpoint's
        self.save_hyperparameters(ignore=["network", "optimizer", "compile"])
        self.compile = compile
        self.input_widths_irc = [tuple(width) for width in input_widths_irc]
        self.network = network if network is not None else default_network(self.input_widths_irc, num_classes)
        check_network_views(self.network, self.input_widths_irc)
        self.optimizer_factory = optimizer
        self.augmentation = augmentation or Augmentation()
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        if init_checkpoint:
            load_network_weights(self.network, init_checkpoint, trust=trust_checkpoint)
        if finetune_depth is not None:
            freeze_all_but_last(self.network, finetune_depth)
        self.class_names = class_names  # from the data (linked by the CLI); None: class0, class1, ...
        self.register_buffer("logit_shift", torch.zeros(num_classes), persistent=False)
        self.configure_evaluation(EvaluationChoices())
        self.evaluations: dict[str, EvaluationOutcome] = {}
        example = [torch.zeros(1, 1, *width) for width in self.input_widths_irc]  # for the model summary
        self.example_input_array = example[0] if len(example) == 1 else (example,)
        self._checkpoint_epoch = 0
        self.class_frequencies: tuple[list[float], list[float]] | None = (
            None  # natural, sampled (training data)
        )
        self._first_nonfinite_step = None

    @property
    def crop_inputs(self) -> CropInputs:
        """What the network takes: each view's crop and spacing, and the stored intensities."""
        return CropInputs.of(
            self.input_widths_irc, self.hparams.input_spacings_mm, self.hparams.input_intensity
        )

    # ------------------------------------------------------------------ evaluation and priors
    def configure_evaluation(self, evaluation: EvaluationChoices) -> None:
        """Evaluate with ``evaluation`` from now on: its threshold and mistakes in fresh metrics,
        its test-time flips and prior correction in ``probabilities``."""
        self.evaluation = evaluation
        options = {
            "num_classes": self.hparams.num_classes,
            "class_names": self.class_names,
            "threshold": evaluation.threshold,
        }
        shown = {
            "curves": True,
            "crop_shape": self.input_widths_irc[0],
            "mistakes": evaluation.mistakes_shown,
            "display_window": display_window(self.hparams.input_intensity),
        }
        self.train_metrics = StageMetrics("train", **options)
        self.val_metrics = StageMetrics("val", **options, **shown)
        self.test_metrics = StageMetrics("test", **options, **shown)
        if not evaluation.prior_correction:
            self.logit_shift = torch.zeros_like(self.logit_shift)

    def setup(self, stage: str) -> None:
        """Note the training data's class frequencies when training (saved in checkpoints, for an
        export's prior correction), and take the prior correction from them when asked for."""
        if stage == "fit" or self.evaluation.prior_correction:
            self.class_frequencies = tuple(
                np.asarray(f).tolist() for f in crop_data(self.trainer).class_frequencies()
            )
        if not self.evaluation.prior_correction:
            return
        natural, sampled = (np.asarray(f) for f in self.class_frequencies)
        shift = np.log(natural) - np.log(sampled)
        self.logit_shift = torch.as_tensor(shift, dtype=torch.float32, device=self.logit_shift.device)
        log.info(
            "prior correction: logits shifted by %s (natural class frequencies %s, sampled %s)",
            np.round(shift, 3).tolist(),
            np.round(natural, 4).tolist(),
            np.round(sampled, 4).tolist(),
        )

    def on_after_batch_transfer(self, batch: CropBatch, dataloader_idx: int) -> CropBatch:
        """int16 -> float32 on the device, then augment (training) or cut the model's crops exactly;
        every view of a sample is transformed together."""
        if not isinstance(batch, dict):  # e.g. the model summary's example input: already a crop tensor
            return batch
        views = [batch, *batch.get("extra_views", [])]
        if len(views) != len(self.input_widths_irc):
            raise ValueError(
                f"the batches have {len(views)} views of each candidate but the model was made for "
                f"{len(self.input_widths_irc)} (model.input_widths_irc, linked from the data)"
            )
        inputs = [
            ViewCrops(view["crop"].float(), view["window_irc"], width, view["offset_irc"], view["voxel_mm"])
            for view, width in zip(views, self.input_widths_irc, strict=True)
        ]
        if self._attached_trainer() is not None and self.trainer.training:
            crops = augment_views(inputs, self.augmentation)
        else:
            crops = [window_crop(view.crops, view.window_irc, view.width_irc) for view in inputs]
        if self.hparams.channels_last:
            crops = [crop.contiguous(memory_format=torch.channels_last_3d) for crop in crops]
        extra = [{**view, "crop": crop} for view, crop in zip(views[1:], crops[1:], strict=True)]
        return {**batch, "crop": crops[0], "extra_views": extra}

    def _attached_trainer(self) -> pl.Trainer | None:
        """The Trainer running this module, or None (the model summary's example, a module in a script)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's "is not attached to a Trainer"
            return None

    @staticmethod
    def network_input(batch: CropBatch) -> torch.Tensor | list[torch.Tensor]:
        """What the network takes: the crop, or the crops of every view (the first view first)."""
        if not batch.get("extra_views"):
            return batch["crop"]
        return [batch["crop"], *(view["crop"] for view in batch["extra_views"])]

    # ------------------------------------------------------------------ forward
    def forward(self, crops: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of crops ``[B, 1, I, R, C]`` (a list of them: one per view)."""
        return logits_of(self._runnable_network(), crops)

    def _runnable_network(self) -> nn.Module:
        """The network, or its compiled twin (same parameters; kept off the module tree so that
        state dicts and checkpoints hold the plain network's keys)."""
        if not self.compile:
            return self.network
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = torch.compile(self.network)
            object.__setattr__(self, "_compiled", compiled)
        return compiled

    def probabilities(self, crops: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]``: prior-corrected, averaged over the test-time
        flips (every view flipped along the same axes) and over the members of an ensemble."""
        runs = []
        networks = [self._runnable_network(), *self.ensemble_members()]
        for dims in self.evaluation.flips:
            flipped = (
                flip(crops, dims) if isinstance(crops, torch.Tensor) else [flip(view, dims) for view in crops]
            )
            runs += [
                F.softmax(logits_of(network, flipped).float() + self.logit_shift, dim=1)
                for network in networks
            ]
        return torch.stack(runs).mean(0)

    def set_ensemble(self, networks: list[nn.Module]) -> None:
        """Evaluate as the mean of this module's network and ``networks`` (trained copies of it:
        the folds of a cross-validation, the seeds of a configuration). They are kept off the
        module tree, so that checkpoints and state dicts hold only this module's own weights."""
        for network in networks:
            network.eval().requires_grad_(False)
        object.__setattr__(self, "_members", list(networks))

    def ensemble_members(self) -> list[nn.Module]:
        """The other members of the ensemble, on this module's device (none unless ``set_ensemble``)."""
        members = self.__dict__.get("_members", [])
        for member in members:
            if next(member.parameters()).device != self.device:
                member.to(self.device)
        return members

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: CropBatch, batch_idx: int) -> torch.Tensor:
        crops, labels = self.network_input(batch), batch["label"]
        smoothing = self.hparams.label_smoothing
        if self.hparams.mixup_alpha > 0:
            crops, partner, weight = mixup(crops, self.hparams.mixup_alpha)
            logits = self(crops)
            losses = weight * F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing) + (
                1 - weight
            ) * F.cross_entropy(logits, labels[partner], reduction="none", label_smoothing=smoothing)
        else:
            logits = self(crops)
            losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing)
        loss = losses.mean()
        self._note_nonfinite(loss)
        self.train_metrics.update(F.softmax(logits.detach().float(), dim=1), labels, losses)
        self.log("train/loss_step", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: CropBatch, metrics: StageMetrics) -> dict[str, torch.Tensor]:
        crops, labels = batch["crop"], batch["label"]
        probabilities = self.probabilities(self.network_input(batch))
        losses = -torch.log(probabilities.gather(1, labels[:, None])[:, 0].clamp_min(1e-12))
        identity = {name: batch[name] for name in ("index", "image", "center_xyz", "voxel_mm")}
        # the candidate's voxel in the crop: where the mistakes montage cuts its slices
        metrics.update(
            probabilities, labels, losses, identity, crops[:, 0], batch["offset_irc"] - batch["window_irc"]
        )
        return {"probabilities": probabilities.detach()}

    def validation_step(self, batch: CropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The batch's probabilities, for callbacks (``CandidateTable``); the metrics keep the rest."""
        return self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: CropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, self.test_metrics)

    def predict_step(
        self, batch: CropBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, np.ndarray]:
        """Each sample's ``image`` number, ``center_xyz`` and class ``probabilities``, as numpy
        copies (no shared memory kept)."""
        return {
            "image": batch["image"].cpu().numpy().copy(),
            "center_xyz": batch["center_xyz"].cpu().numpy().copy(),
            "probabilities": self.probabilities(self.network_input(batch)).cpu().numpy(),
        }

    # ------------------------------------------------------------------ divergence
    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember the first step with a non-finite loss, on the device (no synchronisation here)."""
        step = torch.tensor(self.global_step, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.full((), -1, device=loss.device, dtype=torch.long)
        self._first_nonfinite_step = torch.where(
            bad & (self._first_nonfinite_step < 0), step, self._first_nonfinite_step
        )

    def _raise_if_diverged(self) -> None:
        if self._first_nonfinite_step is None:
            return
        step = int(self.trainer.strategy.reduce(self._first_nonfinite_step.float(), reduce_op="max"))
        if step >= 0:
            raise DivergenceError(
                f"the training loss became NaN or infinite at step {step} (epoch {self.current_epoch}); "
                "training "
                "stopped. The weights after that step are not usable, so no checkpoint was written for it: "
                "the "
                "last good one is checkpoints/last.ckpt (the end of the previous epoch). Lower the learning "
                "rate "
                "or check the data."
            )

    def on_train_batch_end(self, outputs, batch: CropBatch, batch_idx: int) -> None:
        """Look for a diverged loss every ``log_every_n_steps`` (one synchronisation per check)."""
        if (self.global_step % max(self.trainer.log_every_n_steps, 1)) == 0:
            self._raise_if_diverged()

    # ------------------------------------------------------------------ epoch ends
    def on_train_start(self) -> None:
        """Start validation metrics clean: the sanity check must not leak in."""
        self.val_metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._raise_if_diverged()
        self.log_dict(self.train_metrics.compute_scalars(), sync_dist=True)  # already equal on all ranks
        self.train_metrics.reset()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING:
            self._raise_if_diverged()  # before validation, so that no checkpoint holds diverged weights
        self._set_evaluation_reference(self.val_metrics, "val")

    def on_test_start(self) -> None:
        self._set_evaluation_reference(self.test_metrics, "test")

    def _set_evaluation_reference(self, metrics: StageMetrics, stage: str) -> None:
        data = crop_data(self.trainer)
        metrics.set_froc_reference(data.evaluation_reference(stage), data.image_ids)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._end_evaluation(self.test_metrics)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the random streams too: a run resumed from this step then repeats an uninterrupted one;
        and say what the checkpoint is (``luna.training.checkpoints.task_of``)."""
        checkpoint[TASK_KEY] = "classification"
        if self.class_frequencies is not None:
            natural, sampled = self.class_frequencies
            checkpoint[FREQUENCIES_KEY] = {"natural": list(natural), "sampled": list(sampled)}
        kind, keys, position, has_gauss, cached = np.random.get_state()
        checkpoint["luna_rng"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [kind, keys.tolist(), position, has_gauss, cached],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._checkpoint_epoch = int(checkpoint.get("epoch", 0))
        frequencies = checkpoint.get(FREQUENCIES_KEY)
        if frequencies is not None and self.class_frequencies is None:
            self.class_frequencies = (frequencies["natural"], frequencies["sampled"])
        states = checkpoint.get("luna_rng")
        if (
            states is not None
            and self._attached_trainer() is not None
            and self.trainer.state.fn == TrainerFn.FITTING
        ):
            torch.set_rng_state(states["torch"])
            kind, keys, position, has_gauss, cached = states["numpy"]
            np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
            random.setstate(states["python"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def _end_evaluation(self, metrics: StageMetrics) -> None:
        if self.trainer.sanity_checking:
            metrics.reset()
            return
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        outcome = metrics.compute(
            epoch=self.current_epoch if fitting else self._checkpoint_epoch
        )  # collective
        nonfinite = outcome.scalars[f"{metrics.stage}/nonfinite"]
        if nonfinite:
            log.warning(
                "%s: %d samples had non-finite probabilities and were left out of the metrics",
                metrics.stage,
                int(nonfinite),
            )
        self.log_dict(
            outcome.scalars, sync_dist=True
        )  # already equal on all ranks: the mean leaves them as they are
        self.evaluations[metrics.stage] = outcome
        metrics.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        groups = parameter_groups(self.network, self.hparams.lr_decay_per_unit)
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.99)
        else:
            optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        schedule = self.hparams.lr_schedule
        steps = int(self.trainer.estimated_stepping_batches) if schedule != "constant" else 0
        return with_schedule(optimizer, schedule, steps)
