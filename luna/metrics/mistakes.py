"""The most confident mistakes of an evaluation, gathered from every process (for the montage)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from luna.metrics.lists import cat_state


class ConfidentMistakes(Metric):
    """The ``k`` most confident mistakes of each true class, with the slice through each candidate.

    A mistake's confidence is the probability of the class it was wrongly given. Each process
    keeps only its own top ``k`` per class; the lists are gathered at the end, so the montage shows
    the worst mistakes of the whole split, not of one rank's share.
    """

    full_state_update = False
    PARTS = ("score", "predicted", "index", "image", "center", "marker", "slice")

    def __init__(self, num_classes: int = 2, slice_shape: tuple[int, int] = (48, 48), k: int = 8) -> None:
        super().__init__()
        self.num_classes, self.slice_shape, self.k = num_classes, tuple(slice_shape), k
        for true_class in range(num_classes):
            for part in self.PARTS:
                self.add_state(f"c{true_class}_{part}", default=[], dist_reduce_fx="cat")

    def _gathered(self, true_class: int) -> dict[str, torch.Tensor]:
        widths = {"center": 3, "marker": 2, "slice": self.slice_shape[0] * self.slice_shape[1]}
        return {part: cat_state(getattr(self, f"c{true_class}_{part}"), torch.float64, widths.get(part))
                for part in self.PARTS}

    def update(self, predicted: torch.Tensor, score: torch.Tensor, label: torch.Tensor, index: torch.Tensor,
               image: torch.Tensor, center_xyz: torch.Tensor, marker_rc: torch.Tensor, slices: torch.Tensor) -> None:
        """Per sample: ``predicted`` class and its probability ``score``, true ``label``, and what
        identifies and shows it (cache ``index``, ``image``, ``center_xyz``, the candidate's
        ``marker_rc`` in its ``slices`` [B, R, C])."""
        wrong = predicted != label
        new = {"score": score, "predicted": predicted, "index": index, "image": image, "center": center_xyz,
               "marker": marker_rc, "slice": slices.flatten(1)}
        for true_class in range(self.num_classes):
            picked = wrong & (label == true_class)
            old = self._gathered(true_class)
            merged = {part: torch.cat([old[part].to(new[part].device), new[part][picked].double()]) for part in self.PARTS}
            order = merged["score"].argsort(descending=True)[: self.k]
            for part in self.PARTS:
                setattr(self, f"c{true_class}_{part}", [merged[part][order]])

    def compute(self) -> list[dict[str, np.ndarray]]:
        """For each true class, its mistakes, most confident first (numpy arrays)."""
        result = []
        for true_class in range(self.num_classes):
            parts = self._gathered(true_class)
            order = parts["score"].argsort(descending=True)[: self.k]
            picked = {part: value[order].cpu().numpy() for part, value in parts.items()}
            picked["slice"] = picked["slice"].reshape(-1, *self.slice_shape)
            for part in ("predicted", "index", "image", "marker"):
                picked[part] = picked[part].astype(np.int64)
            result.append(picked)
        return result
