"""The metrics of the segmentation stage: sums that torchmetrics adds up over processes, so that
DDP gives exactly what one process gives (each volume is validated by one process, never twice).

Per voxel, at the probability threshold: ``dice``, ``voxel_precision``, ``voxel_recall``. Per
finding (an annotated nodule): ``nodule_recall``, the share of findings that some candidate
grouped from the segmentation hits (LUNA16's hit rule), and ``candidates_per_scan``: what a
detection pays for that recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics import Metric

NAMES = ("dice", "voxel_precision", "voxel_recall", "nodule_recall", "candidates_per_scan")


class SegmentationMetrics(Metric):
    """Voxel and per-nodule counts of one evaluation, and the scores they give."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in (
            "true_positive",
            "false_positive",
            "false_negative",
            "nodules",
            "nodules_hit",
            "candidates",
            "volumes",
        ):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, predicted: torch.Tensor, mask: torch.Tensor, nodules: int, nodules_hit: int, candidates: int
    ) -> None:
        """One volume: its thresholded prediction and mask (booleans of one shape), its findings,
        how many a candidate hit, and its candidates."""
        predicted, mask = predicted.bool(), mask.bool()
        self.true_positive += (predicted & mask).sum().double()
        self.false_positive += (predicted & ~mask).sum().double()
        self.false_negative += (~predicted & mask).sum().double()
        self.nodules += nodules
        self.nodules_hit += nodules_hit
        self.candidates += candidates
        self.volumes += 1

    def compute(self) -> dict[str, float]:
        """The scores; NaN where a denominator is 0 (no finding, no voxel predicted)."""

        def ratio(top: torch.Tensor, bottom: torch.Tensor) -> float:
            return float(top / bottom) if bottom > 0 else float("nan")

        tp, fp, fn = self.true_positive, self.false_positive, self.false_negative
        return {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "voxel_precision": ratio(tp, tp + fp),
            "voxel_recall": ratio(tp, tp + fn),
            "nodule_recall": ratio(self.nodules_hit, self.nodules),
            "candidates_per_scan": ratio(self.candidates, self.volumes),
        }


@dataclass
class SegmentationOutcome:
    """What one validation or test produced, for the console and the figures (equal on every rank,
    but for ``examples``: global rank 0's first volumes).

    Attributes:
        stage, epoch: what was evaluated, with the weights of which epoch.
        scalars: the logged values, keyed ``<stage>/<name>``.
        threshold: the probability threshold of the masks and candidates.
        examples: ``(image, mask, probability)`` axial slices, through each volume's largest finding.
    """

    stage: str
    epoch: int
    scalars: dict[str, float]
    threshold: float
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
