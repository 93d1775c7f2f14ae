"""Per-stage metrics: torchmetrics objects whose states synchronise exactly across processes.

Every number here is a sum, a count or a list of predictions that torchmetrics gathers at epoch
end, so with the DataModule's unpadded evaluation samplers, DDP gives the same values as one
process: no sample counted twice, none dropped, the loss averaged over samples, not over ranks.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryCalibrationError,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryPrecisionRecallCurve,
    BinaryRecall,
)

RELIABILITY_BINS = 10


class ConfidentMistakes(Metric):
    """The ``k`` most confident false positives and false negatives, with their centre slices.

    States are lists of 1-D tensors (slices flattened) so that torchmetrics can gather shares of
    different sizes; each process keeps only its own top ``k``, and the montage shows the worst
    mistakes of the whole validation set, not of one rank's share.
    """

    full_state_update = False

    def __init__(self, slice_shape: tuple[int, int] = (48, 48), k: int = 8, threshold: float = 0.5) -> None:
        super().__init__()
        self.slice_shape, self.k, self.threshold = tuple(slice_shape), k, threshold
        for kind in ("fp", "fn"):
            for part in ("score", "index", "slice"):
                self.add_state(f"{kind}_{part}", default=[], dist_reduce_fx="cat")

    def _gathered(self, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = []
        for part in ("score", "index", "slice"):
            value = getattr(self, f"{kind}_{part}")
            if isinstance(value, list):
                value = torch.cat(value) if value else torch.zeros(0, device=self.device)
            parts.append(value)
        score, index, slices = parts
        return score, index, slices.reshape(-1, *self.slice_shape)

    def _keep(self, kind: str, score: torch.Tensor, index: torch.Tensor, slices: torch.Tensor) -> None:
        old_score, old_index, old_slices = self._gathered(kind)
        scores = torch.cat([old_score, score])
        order = scores.argsort(descending=True)[: self.k]
        setattr(self, f"{kind}_score", [scores[order]])
        setattr(self, f"{kind}_index", [torch.cat([old_index, index.float()])[order]])
        setattr(self, f"{kind}_slice", [torch.cat([old_slices, slices])[order].flatten()])

    def update(self, probability: torch.Tensor, label: torch.Tensor, index: torch.Tensor, slices: torch.Tensor) -> None:
        """``probability`` of a nodule, ``label`` 0/1, candidate ``index``, centre ``slices`` [B, R, C]."""
        false_positive = (label == 0) & (probability >= self.threshold)
        false_negative = (label == 1) & (probability < self.threshold)
        self._keep("fp", probability[false_positive], index[false_positive], slices[false_positive].float())
        self._keep("fn", 1 - probability[false_negative], index[false_negative], slices[false_negative].float())

    def compute(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``{"false_positive": (confidence, index, slices), "false_negative": (...)}``, most confident first."""
        result = {}
        for kind, name in (("fp", "false_positive"), ("fn", "false_negative")):
            score, index, slices = self._gathered(kind)
            order = score.argsort(descending=True)[: self.k]
            result[name] = (score[order], index[order].long(), slices[order])
        return result


class ReliabilityBins(Metric):
    """Counts for a reliability diagram: per bin of predicted probability, its mean and the positive rate."""

    full_state_update = False

    def __init__(self, bins: int = RELIABILITY_BINS) -> None:
        super().__init__()
        self.bins = bins
        for name in ("count", "probability_sum", "positive_sum"):
            self.add_state(name, default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probability: torch.Tensor, label: torch.Tensor) -> None:
        bin_of = torch.clamp((probability * self.bins).long(), max=self.bins - 1)
        self.count += torch.bincount(bin_of, minlength=self.bins).double()
        self.probability_sum += torch.bincount(bin_of, weights=probability.double(), minlength=self.bins)
        self.positive_sum += torch.bincount(bin_of, weights=label.double(), minlength=self.bins)

    def compute(self) -> dict[str, torch.Tensor]:
        """``count``, mean predicted ``confidence`` and observed ``positive_rate`` per bin (NaN when empty)."""
        return {
            "count": self.count,
            "confidence": self.probability_sum / self.count,
            "positive_rate": self.positive_sum / self.count,
        }


class StageMetrics(nn.Module):
    """Scalars and curves of one stage (``train``, ``val`` or ``test``).

    Scalars: accuracy, precision, recall, F1, AUROC, expected calibration error, the mean loss over
    all samples, over positives and over negatives, and the sample count. With ``curves``, also the
    PR curve, confusion matrix, reliability bins and most confident mistakes for figures.
    """

    def __init__(self, stage: str, curves: bool = False, slice_shape: tuple[int, int] = (48, 48), mistakes: int = 8) -> None:
        super().__init__()
        self.stage = stage
        self.scores = MetricCollection(
            {
                "accuracy": BinaryAccuracy(),
                "precision": BinaryPrecision(),
                "recall": BinaryRecall(),
                "f1": BinaryF1Score(),
                "auroc": BinaryAUROC(),
                "calibration_error": BinaryCalibrationError(n_bins=RELIABILITY_BINS),
            }
        )
        # float64 sums: the mean over all samples is then independent of how they were split up
        self.loss = MeanMetric().set_dtype(torch.float64)
        self.loss_positive = MeanMetric().set_dtype(torch.float64)
        self.loss_negative = MeanMetric().set_dtype(torch.float64)
        self.samples = SumMetric()
        self.curves = curves
        if curves:
            self.pr_curve = BinaryPrecisionRecallCurve()
            self.confusion = BinaryConfusionMatrix()
            self.reliability = ReliabilityBins()
            self.mistakes = ConfidentMistakes(slice_shape, mistakes)

    def update(self, probability: torch.Tensor, label: torch.Tensor, loss: torch.Tensor,
               index: torch.Tensor | None = None, slices: torch.Tensor | None = None) -> None:
        """``probability`` of a nodule [B], ``label`` [B], per-sample ``loss`` [B] (+ index, slices for mistakes)."""
        probability, loss = probability.detach().float(), loss.detach().double()
        self.scores.update(probability, label)
        self.loss.update(loss)
        positive = label == 1
        # Updated even when empty: every process must run the same collectives at compute time.
        self.loss_positive.update(loss[positive])
        self.loss_negative.update(loss[~positive])
        self.samples.update(torch.tensor(float(label.numel()), device=label.device))
        if self.curves:
            self.pr_curve.update(probability, label)
            self.confusion.update(probability, label)
            self.reliability.update(probability, label)
            if index is not None and slices is not None:
                self.mistakes.update(probability, label, index, slices)

    def compute_scalars(self) -> dict[str, torch.Tensor]:
        """All scalars, keyed ``<stage>/<name>``; collective: call on every process."""
        values = dict(self.scores.compute())
        for name in ("loss", "loss_positive", "loss_negative"):  # NaN when a stage saw no such sample
            values[name] = getattr(self, name).compute()
        values["samples"] = self.samples.compute()
        return {f"{self.stage}/{name}": value for name, value in values.items()}

    def compute_curves(self) -> dict:
        """PR curve, confusion matrix, reliability bins, mistakes; collective: call on every process."""
        return {
            "pr_curve": self.pr_curve.compute(),
            "confusion": self.confusion.compute(),
            "reliability": self.reliability.compute(),
            # torchmetrics squeezes one-element results to 0-d: restore the [k], [k], [k, R, C] shapes
            "mistakes": {
                kind: (score.reshape(-1), index.reshape(-1), slices.reshape(-1, *self.mistakes.slice_shape))
                for kind, (score, index, slices) in self.mistakes.compute().items()
            },
        }

    def reset(self) -> None:
        for module in self.modules():
            if isinstance(module, (Metric, MetricCollection)):
                module.reset()
