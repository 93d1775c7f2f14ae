"""The ``evaluation`` section of the command line: how this command evaluates, whatever the checkpoint
says."""

from __future__ import annotations

import copy
import logging

import pytorch_lightning as pl

from luna.training.checkpoints import CheckpointError, check_fits, read_checkpoint
from luna.training.evaluation import EvaluationChoices
from luna.training.finetuning import load_network_weights
from luna.training.module import LunaClassifier

log = logging.getLogger(__name__)


class EvaluationSettings(pl.Callback):
    """Gives the module this command's evaluation choices before every fit, validate, test and predict.

    Args:
        threshold: binary runs: the decision threshold on P(class 1) for accuracy, precision,
            recall, F1 and the confusion matrix.
        tta_flips: test-time flips, e.g. ``[[], [0], [1], [2]]`` (axes 0 = I, 1 = R, 2 = C); the
            probability is their mean.
        prior_correction: give probabilities at the natural class ratio of the training data.
        mistakes_shown: most confident mistakes per true class in the montage.
        saliency: overlay where the model looked on the mistakes (montage and W&B table); it
            costs a few hundred forward passes per mistake shown at each validation.
        ensemble: more checkpoints of the same model (the folds of a cross-validation, the seeds
            of a configuration): validate, test and predict average their probabilities with the
            evaluated one's (``--ckpt_path``).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        tta_flips: list[list[int]] | None = None,
        prior_correction: bool = False,
        mistakes_shown: int = 8,
        ensemble: list[str] | None = None,
        saliency: bool = False,
    ) -> None:
        self.evaluation = EvaluationChoices(threshold, tta_flips, prior_correction, mistakes_shown, saliency)
        self.ensemble = list(ensemble or [])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, LunaClassifier):  # the segmentation evaluates with its own threshold
            if self.ensemble:
                raise ValueError(
                    f"evaluation.ensemble averages classifiers; {type(pl_module).__name__} is not one"
                )
            return
        pl_module.configure_evaluation(self.evaluation)
        if not self.ensemble:
            return
        if stage == "fit":
            raise ValueError(
                "evaluation.ensemble averages trained models in validate, test and predict; fit trains "
                "one model (leave evaluation.ensemble out)"
            )
        members = []
        for path in self.ensemble:
            hparams = read_checkpoint(path, trust_option="(none: ensemble members are read safely)").get(
                "hyper_parameters", {}
            )
            check_fits(
                path,
                hparams,
                pl_module.hparams.num_classes,
                pl_module.crop_inputs,
                "the evaluated checkpoint (evaluation.ensemble mixes only models of the same crops)",
            )
            member = copy.deepcopy(pl_module.network)
            try:
                load_network_weights(member, path)
            except RuntimeError as error:  # a size mismatch: another model's checkpoint
                raise CheckpointError(
                    f"evaluation.ensemble: {path} is not a checkpoint of this model "
                    f"({str(error).splitlines()[0]})"
                ) from None
            members.append(member)
        pl_module.set_ensemble(members)
        log.info(
            "evaluating an ensemble of %d models: the evaluated checkpoint and %s",
            len(members) + 1,
            ", ".join(map(str, self.ensemble)),
        )
