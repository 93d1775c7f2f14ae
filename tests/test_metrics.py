"""StageMetrics on hand-made predictions: thresholds, the best F1, non-finite outputs, mistakes."""

import math

import pytest
import torch

from luna.metrics.stage import StageMetrics
from luna.training.evaluation import EvaluationChoices


def two_class(p_positive):
    p = torch.tensor(p_positive, dtype=torch.float32)
    return torch.stack([1 - p, p], dim=1)


LABELS = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
P_POSITIVE = [0.9, 0.45, 0.35, 0.6, 0.4, 0.2, 0.1, 0.05]


def scalars(threshold=0.5, curves=True):
    metrics = StageMetrics("val", threshold=threshold, curves=curves, crop_shape=(2, 2, 2))
    metrics.update(two_class(P_POSITIVE), LABELS, torch.zeros(8))
    return metrics.compute(epoch=3) if curves else None, metrics


def test_per_crop_metrics_are_taken_at_the_threshold():
    at_half, _ = scalars(0.5)
    assert at_half.scalars["val/recall"] == pytest.approx(1 / 3) and at_half.scalars[
        "val/precision"
    ] == pytest.approx(0.5)
    at_0_3, _ = scalars(0.3)
    assert at_0_3.scalars["val/recall"] == 1.0 and at_0_3.scalars["val/precision"] == pytest.approx(3 / 5)
    assert at_half.threshold == 0.5 and at_0_3.threshold == 0.3
    assert at_half.confusion.tolist() == [[4, 1], [2, 1]]


def test_average_precision_is_logged_the_mean_precision_at_each_positive():
    outcome, _ = scalars(0.5)
    # ranked 0.9 P, 0.6 N, 0.45 P, 0.4 N, 0.35 P: precision 1/1, 2/3 and 3/5 where each nodule is reached
    assert outcome.scalars["val/average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_best_f1_scans_the_thresholds_and_is_at_least_the_f1_at_the_threshold():
    outcome, _ = scalars(0.5)
    best, threshold = outcome.scalars["val/f1_best"], outcome.scalars["val/f1_best_threshold"]
    assert best == pytest.approx(0.75)  # threshold 0.35: 3 true positives, 2 false positives (0.6, 0.4)
    assert threshold == pytest.approx(0.35)
    assert best >= outcome.scalars["val/f1"]


def test_nonfinite_probabilities_are_left_out_counted_and_never_crash():
    metrics = StageMetrics("val", curves=True, crop_shape=(2, 2, 2))
    probabilities = two_class(P_POSITIVE)
    probabilities[0] = float("nan")
    probabilities[3, 1] = float("inf")
    metrics.update(probabilities, LABELS, torch.zeros(8))
    outcome = metrics.compute(epoch=0)
    assert outcome.scalars["val/nonfinite"] == 2 and outcome.scalars["val/samples"] == 6
    assert all(math.isfinite(outcome.scalars[f"val/{name}"]) for name in ("f1", "auroc", "calibration_error"))


def test_the_most_confident_mistakes_come_first_per_true_class_with_three_planes_through_each():
    metrics = StageMetrics("val", curves=True, crop_shape=(2, 2, 2), mistakes=2)
    identity = {
        "index": torch.arange(8),
        "image": torch.zeros(8, dtype=torch.long),
        "center_xyz": torch.zeros(8, 3),
        "voxel_mm": torch.ones(8, 3, dtype=torch.float64),
    }
    crops = 100 * torch.arange(8.0)[:, None, None, None] + torch.arange(8.0).reshape(1, 2, 2, 2)
    marker = torch.tensor([[1, 0, 1]] * 8)
    marker[2, 0] = 5  # a centre outside its crop is cut at the nearest slice, never an index error
    metrics.update(two_class(P_POSITIVE), LABELS, torch.zeros(8), identity, crops, marker)
    false_positives, false_negatives = metrics.compute(epoch=0).mistakes
    assert false_positives["index"].tolist() == [3]  # P = 0.6 on a negative
    assert false_negatives["index"].tolist() == [2, 1]  # P(nodule) 0.35 then 0.45: sure it is not, most first
    assert false_negatives["score"].tolist() == pytest.approx([0.65, 0.55])
    assert false_negatives["marker"].tolist() == [[1, 0, 1], [1, 0, 1]]
    assert false_negatives["axial"][0].tolist() == [[204, 205], [206, 207]]  # crop 2, slice i = 1
    assert false_negatives["coronal"][0].tolist() == [[200, 201], [204, 205]]  # row r = 0
    assert false_negatives["sagittal"][0].tolist() == [[201, 203], [205, 207]]  # column c = 1


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="threshold=1.5"):
        EvaluationChoices(threshold=1.5)
    with pytest.raises(ValueError, match="crop_shape"):
        StageMetrics("val", curves=True)
    with pytest.raises(ValueError, match="num_classes=1"):
        StageMetrics("val", num_classes=1)
