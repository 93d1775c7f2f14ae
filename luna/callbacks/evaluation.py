"""The ``evaluation`` section of the command line: how this command evaluates, whatever the checkpoint says."""

from __future__ import annotations

import pytorch_lightning as pl

from luna.training.evaluation import Evaluation
from luna.training.module import LunaClassifier


class EvaluationSettings(pl.Callback):
    """Gives the module this command's evaluation choices before every fit, validate, test and predict.

    Args:
        threshold: binary runs: the decision threshold on P(class 1) for accuracy, precision,
            recall, F1 and the confusion matrix.
        tta_flips: test-time flips, e.g. ``[[], [0], [1], [2]]`` (axes 0 = I, 1 = R, 2 = C); the
            probability is their mean.
        prior_correction: give probabilities at the natural class ratio of the training data.
        mistakes_shown: most confident mistakes per true class in the montage.
    """

    def __init__(self, threshold: float = 0.5, tta_flips: list[list[int]] | None = None,
                 prior_correction: bool = False, mistakes_shown: int = 8) -> None:
        self.evaluation = Evaluation(threshold, tta_flips, prior_correction, mistakes_shown)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, LunaClassifier):
            raise TypeError(f"the evaluation settings configure a LunaClassifier, not {type(pl_module).__name__}")
        pl_module.configure_evaluation(self.evaluation)
