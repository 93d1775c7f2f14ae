"""Per-stage metrics: torchmetrics objects whose states synchronise exactly across processes.

Every number here is a sum, a count or a list of predictions that torchmetrics gathers at epoch
end, so with the DataModule's unpadded evaluation samplers, DDP gives the same values as one
process: no sample counted twice, none dropped, the loss averaged over samples, not over ranks.

Binary runs (LUNA16 candidates) log ``accuracy``, ``precision``, ``recall``, ``f1`` at the
decision ``threshold`` on P(class 1), ``auroc``, ``calibration_error`` (ECE), the losses over all
samples, positives and negatives, and, for validation and test, ``f1_best`` with its threshold
(optimistic: the threshold is chosen on the same data) and ``cpm`` (LUNA16's FROC score over the
evaluated scans, when the data defines them). Runs with more classes log the macro averages, the
recall of every class and the loss of every class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryPrecisionRecallCurve,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from luna.evaluation.froc import FrocResult, Reference
from luna.metrics.figures import LUNG_WINDOW_HU
from luna.metrics.froc import FrocMetric
from luna.metrics.mistakes import ConfidentMistakes
from luna.metrics.reliability import RELIABILITY_BINS, ReliabilityBins

log = logging.getLogger(__name__)


@runtime_checkable
class Evaluated(Protocol):
    """A LightningModule that publishes what each validation and test produced (``LunaClassifier``):
    what the figures and the console read, instead of recomputing it."""

    evaluations: dict[str, EvaluationOutcome]


def evaluation_of(pl_module: object, stage: str) -> EvaluationOutcome | None:
    """What the module's last ``stage`` evaluation produced (None before the first one).

    Raises:
        TypeError: the module does not publish its evaluations (``luna.metrics.stage.Evaluated``).
    """
    if not isinstance(pl_module, Evaluated):
        raise TypeError(
            f"{type(pl_module).__name__} does not publish its evaluations (luna.metrics.stage.Evaluated); "
            "luna's figures and console need LunaClassifier or a module that does"
        )
    return pl_module.evaluations.get(stage)


@dataclass
class EvaluationOutcome:
    """What one validation or test produced, for logging and figures (numpy, equal on every rank).

    Attributes:
        stage: ``val`` or ``test``; epoch: the epoch of the weights evaluated.
        scalars: the logged values, keyed ``<stage>/<name>``.
        class_names: names of the classes, index = label.
        threshold: the binary decision threshold on P(class 1) (None for more classes).
        pr_curve: binary only: ``precision``, ``recall``, ``thresholds``.
        confusion: ``[C, C]`` counts, rows = true class.
        reliability: ``count``, ``confidence``, ``rate`` per bin (binary: P(class 1) vs the rate of
            class 1; more classes: top-class confidence vs accuracy).
        mistakes: per true class, its most confident mistakes.
        froc: the FROC analysis, when the data defines evaluated scans.
        display_window: the stored values drawn black to white in pictures of the crops.
    """

    stage: str
    epoch: int
    scalars: dict[str, float]
    class_names: list[str]
    threshold: float | None
    confusion: np.ndarray
    reliability: dict[str, np.ndarray]
    mistakes: list[dict[str, np.ndarray]]
    pr_curve: dict[str, np.ndarray] | None = None
    froc: FrocResult | None = None
    display_window: tuple[float, float] = LUNG_WINDOW_HU

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2


def _best_f1(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """The highest F1 over the PR curve's thresholds, and that threshold."""
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if len(f1) == 0:
        return float("nan"), float("nan")
    best = int(np.nanargmax(f1))
    return float(f1[best]), float(thresholds[best])


class StageMetrics(nn.Module):
    """Scalars (and, with ``curves``, the data of the figures) of one stage: ``train``, ``val``, ``test``.

    Args:
        stage: the prefix of every logged name.
        num_classes: 2 keeps the binary names of LUNA16; more use the multiclass forms.
        class_names: one name per class (figures, per-class names); default ``class0``, ...
        threshold: binary decision threshold on P(class 1) for accuracy, precision, recall, F1.
        curves: also keep PR curve, confusion matrix, reliability bins, mistakes and the FROC marks.
        crop_shape: with ``curves``: the (I, R, C) voxels of the crops, whose slices the mistakes
            montage shows.
        mistakes: mistakes kept per true class.
        display_window: the stored values drawn black to white in the montage (``display_window``
            of the data's intensities).

    ``threshold`` is checked where the user gives it (``luna.training.evaluation``).
    """

    def __init__(
        self,
        stage: str,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        threshold: float = 0.5,
        curves: bool = False,
        crop_shape: tuple[int, int, int] | None = None,
        mistakes: int = 8,
        display_window: tuple[float, float] = LUNG_WINDOW_HU,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        if curves and crop_shape is None:
            raise ValueError("curves=True needs the crop_shape whose slices the mistakes montage shows")
        self.display_window = tuple(display_window)
        self.stage, self.num_classes, self.threshold = stage, num_classes, threshold
        self.class_names = list(class_names) if class_names else [f"class{k}" for k in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {num_classes} classes")
        self.binary = num_classes == 2
        if self.binary:
            scores = {
                "accuracy": BinaryAccuracy(threshold),
                "precision": BinaryPrecision(threshold),
                "recall": BinaryRecall(threshold),
                "f1": BinaryF1Score(threshold),
                "auroc": BinaryAUROC(),
                "average_precision": BinaryAveragePrecision(),
                "calibration_error": BinaryCalibrationError(n_bins=RELIABILITY_BINS),
            }
            loss_names = ["loss_negative", "loss_positive"]
        else:
            n = num_classes
            scores = {
                "accuracy": MulticlassAccuracy(n, average="micro"),
                "precision": MulticlassPrecision(n, average="macro"),
                "recall": MulticlassRecall(n, average="macro"),
                "f1": MulticlassF1Score(n, average="macro"),
                "auroc": MulticlassAUROC(n, average="macro"),
                "average_precision": MulticlassAveragePrecision(n, average="macro"),
                "calibration_error": MulticlassCalibrationError(n, n_bins=RELIABILITY_BINS),
                "recall_per_class": MulticlassRecall(n, average="none"),
            }
            loss_names = [f"loss/{name}" for name in self.class_names]
        self.scores = MetricCollection(scores)
        # float64 sums: the mean over all samples is then independent of how they were split up
        self.loss = MeanMetric().set_dtype(torch.float64)
        self.loss_names = loss_names
        self.class_losses = nn.ModuleList(MeanMetric().set_dtype(torch.float64) for _ in range(num_classes))
        self.samples = SumMetric()
        self.nonfinite = SumMetric()
        self.curves = curves
        if curves:
            self.pr_curve = BinaryPrecisionRecallCurve() if self.binary else None
            self.confusion = (
                BinaryConfusionMatrix(threshold) if self.binary else MulticlassConfusionMatrix(num_classes)
            )
            self.reliability = ReliabilityBins()
            self.mistakes = ConfidentMistakes(num_classes, crop_shape, mistakes)
            self.froc = FrocMetric() if self.binary else None

    def set_froc_reference(self, reference: Reference | None, image_ids: list[str]) -> None:
        """Score the FROC against ``reference`` (None: no CPM for this stage)."""
        if self.curves and self.froc is not None:
            self.froc.set_reference(reference, image_ids)

    @property
    def scores_froc(self) -> bool:
        return self.curves and self.froc is not None and self.froc.reference is not None

    def predicted_class(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The decision: P(class 1) >= threshold for two classes, the most probable class otherwise."""
        if self.binary:
            return (probabilities[:, 1] >= self.threshold).long()
        return probabilities.argmax(dim=1)

    def update(
        self,
        probabilities: torch.Tensor,
        label: torch.Tensor,
        loss: torch.Tensor,
        identity: dict[str, torch.Tensor] | None = None,
        crops: torch.Tensor | None = None,
        marker_irc: torch.Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            probabilities: ``[B, C]`` class probabilities.
            label: ``[B]`` true classes.
            loss: ``[B]`` per-sample loss.
            identity: ``index``, ``image`` ``[B]``, ``center_xyz`` and ``voxel_mm`` ``[B, 3]`` of
                each sample (for the mistakes and the FROC).
            crops, marker_irc: the crops ``[B, I, R, C]`` and the candidate's voxel in each, for the
                slices of the mistakes montage.

        Samples whose probabilities are not finite are left out and counted (``nonfinite``).
        """
        finite = torch.isfinite(probabilities).all(dim=1)
        self.nonfinite.update((~finite).sum().double())
        probabilities, label, loss = (
            probabilities[finite].detach().float(),
            label[finite],
            loss[finite].detach().double(),
        )
        scores = probabilities[:, 1] if self.binary else probabilities
        if len(label):  # a batch of only non-finite outputs has nothing to score
            self.scores.update(scores, label)
        self.loss.update(loss)
        for class_index, class_loss in enumerate(self.class_losses):
            # updated even when empty: every process must run the same collectives at compute time
            class_loss.update(loss[label == class_index])
        self.samples.update(torch.tensor(float(label.numel()), device=label.device))
        if not self.curves or not len(label):
            return
        predicted = self.predicted_class(probabilities)
        if self.binary:
            self.pr_curve.update(scores, label)
            self.confusion.update(scores, label)
            self.reliability.update(scores, label)
        else:
            self.confusion.update(probabilities, label)
            self.reliability.update(probabilities.max(dim=1).values, (predicted == label).long())
        if identity is not None:
            identity = {name: value[finite] for name, value in identity.items()}
            if self.scores_froc:
                self.froc.update(identity["image"], identity["center_xyz"], scores)
            if crops is not None and marker_irc is not None:
                chosen = probabilities.gather(1, predicted[:, None])[:, 0]
                self.mistakes.update(
                    predicted,
                    chosen,
                    label,
                    identity["index"],
                    identity["image"],
                    identity["center_xyz"],
                    identity["voxel_mm"],
                    crops[finite].float(),
                    marker_irc[finite],
                )

    def compute_scalars(self) -> dict[str, float]:
        """All scalars, keyed ``<stage>/<name>``; collective: call on every process."""
        values = {"samples": float(self.samples.compute()), "nonfinite": float(self.nonfinite.compute())}
        if values["samples"] == 0:  # nothing finite to score (every process sees the same total)
            values.update({name: float("nan") for name in self.scores.keys() if name != "recall_per_class"})
        else:
            for name, value in self.scores.compute().items():
                if name == "recall_per_class":
                    values.update(
                        {
                            f"recall/{cls}": float(v)
                            for cls, v in zip(self.class_names, value.tolist(), strict=True)
                        }
                    )
                else:
                    values[name] = float(value)
        values["loss"] = float(self.loss.compute())  # NaN when a stage saw no sample
        for name, class_loss in zip(self.loss_names, self.class_losses, strict=True):
            values[name] = float(class_loss.compute())
        return {f"{self.stage}/{name}": value for name, value in values.items()}

    def compute(self, epoch: int) -> EvaluationOutcome:
        """Scalars and curves; collective: call on every process."""
        scalars = self.compute_scalars()
        if scalars[f"{self.stage}/samples"] == 0:
            return EvaluationOutcome(
                stage=self.stage,
                epoch=epoch,
                scalars=scalars,
                class_names=self.class_names,
                threshold=self.threshold if self.binary else None,
                confusion=np.zeros((self.num_classes, self.num_classes)),
                reliability={"count": np.zeros(RELIABILITY_BINS)},
                mistakes=[],
            )
        outcome = EvaluationOutcome(
            stage=self.stage,
            epoch=epoch,
            scalars=scalars,
            class_names=self.class_names,
            threshold=self.threshold if self.binary else None,
            confusion=self.confusion.compute().cpu().numpy(),
            reliability=self.reliability.compute(),
            mistakes=self.mistakes.compute(),
            display_window=self.display_window,
        )
        if self.binary:
            precision, recall, thresholds = (t.cpu().numpy().reshape(-1) for t in self.pr_curve.compute())
            outcome.pr_curve = {"precision": precision, "recall": recall, "thresholds": thresholds}
            f1_best, threshold = _best_f1(precision, recall, thresholds)
            scalars[f"{self.stage}/f1_best"], scalars[f"{self.stage}/f1_best_threshold"] = f1_best, threshold
        if self.scores_froc:
            scalars[f"{self.stage}/cpm"] = float(self.froc.compute())
            outcome.froc = self.froc.analysis
        return outcome

    def reset(self) -> None:
        for module in self.modules():
            if isinstance(module, (Metric, MetricCollection)):
                module.reset()
