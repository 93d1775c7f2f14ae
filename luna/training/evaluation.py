"""How a run evaluates: the choices of the command, never of the checkpoint.

A model trained without test-time flips may be evaluated with them, a threshold picked on
validation may be applied at test time, and prior correction may be switched on for a model
trained on balanced epochs. None of these change the weights, so none is saved with them:
``LunaClassifier`` gets them from the ``evaluation`` section of the command line
(``luna.callbacks.evaluation.EvaluationSettings``), or from ``configure_evaluation`` in code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def check_flips(tta_flips: list[list[int]] | None) -> list[tuple[int, ...]]:
    """Validated test-time flips: each a list of distinct axes among 0 (I), 1 (R), 2 (C)."""
    if not tta_flips:
        return [()]
    flips = []
    for dims in tta_flips:
        if any(not isinstance(d, int) or isinstance(d, bool) or d not in (0, 1, 2) for d in dims) or len(
            set(dims)
        ) != len(dims):
            raise ValueError(
                f"tta_flips={tta_flips}: each flip is a list of distinct axes among 0 (I), 1 (R) and 2 (C); "
                f"{list(dims)} is not"
            )
        flips.append(tuple(dims))
    return flips


@dataclass(frozen=True)
class EvaluationChoices:
    """How validate, test and predict turn the network's outputs into probabilities and metrics.

    Args:
        threshold: binary runs: the decision threshold on P(class 1) at which accuracy, precision,
            recall, F1 and the confusion matrix are taken (``f1_best`` reports the best one).
        tta_flips: test-time augmentation: the probability is the mean over these flips (each a
            list of axes, 0 = I, 1 = R, 2 = C; ``[]`` is no flip); every view flips alike.
        prior_correction: shift the logits by ``log(natural / sampled)`` class frequencies of the
            training data, so that a model trained on balanced epochs gives probabilities at the
            natural class ratio (validation, test, predict; not the training loss).
        mistakes_shown: most confident mistakes kept per true class for the montage.
        saliency: overlay where the model looked (occlusion sensitivity, ``luna.models.saliency``)
            on the mistakes montage and the mistakes of the W&B candidate table. It costs a few
            hundred forward passes per mistake shown, at every validation.
    """

    threshold: float = 0.5
    tta_flips: list[list[int]] | None = None
    prior_correction: bool = False
    mistakes_shown: int = 8
    saliency: bool = False
    flips: list[tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold}: must lie strictly between 0 and 1")
        if (
            isinstance(self.mistakes_shown, bool)
            or not isinstance(self.mistakes_shown, int)
            or self.mistakes_shown < 0
        ):
            raise ValueError(f"mistakes_shown={self.mistakes_shown!r}: must be an integer >= 0")
        if not isinstance(self.saliency, bool):
            raise ValueError(f"saliency={self.saliency!r}: must be true or false")
        object.__setattr__(self, "flips", check_flips(self.tta_flips))
