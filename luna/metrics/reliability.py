"""Counts for a reliability diagram, summed over every process."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

RELIABILITY_BINS = 10


class ReliabilityBins(Metric):
    """Counts for a reliability diagram: per bin of confidence, its mean and the observed rate."""

    full_state_update = False

    def __init__(self, bins: int = RELIABILITY_BINS) -> None:
        super().__init__()
        self.bins = bins
        for name in ("count", "confidence_sum", "outcome_sum"):
            self.add_state(name, default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, confidence: torch.Tensor, outcome: torch.Tensor) -> None:
        """``confidence`` in [0, 1] and whether it came true (0/1), per sample."""
        bin_of = torch.clamp((confidence * self.bins).long(), 0, self.bins - 1)
        self.count += torch.bincount(bin_of, minlength=self.bins).double()
        self.confidence_sum += torch.bincount(bin_of, weights=confidence.double(), minlength=self.bins)
        self.outcome_sum += torch.bincount(bin_of, weights=outcome.double(), minlength=self.bins)

    def compute(self) -> dict[str, np.ndarray]:
        """``count``, mean ``confidence`` and observed ``rate`` per bin (NaN when empty), numpy."""
        count = self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "count": count,
                "confidence": self.confidence_sum.cpu().numpy() / count,
                "rate": self.outcome_sum.cpu().numpy() / count,
            }
