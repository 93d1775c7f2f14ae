"""The most confident mistakes of an evaluation, gathered from every process (for the montage)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from luna.metrics.lists import cat_state

PLANES = ("axial", "coronal", "sagittal")


def voxel_inside(marker_irc: torch.Tensor, crop_shape: tuple[int, ...]) -> torch.Tensor:
    """Voxels ``[B, 3]`` (I, R, C) clamped into crops of ``crop_shape``: a candidate whose centre
    lies outside its crop is shown on the nearest voxel of its edge."""
    return torch.stack([marker_irc[:, axis].clamp(0, size - 1) for axis, size in enumerate(crop_shape)], 1)


def planes_through(crops: torch.Tensor, marker_irc: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three orthogonal slices of each crop ``[B, I, R, C]`` through its voxel ``marker_irc``:
    axial ``[B, R, C]``, coronal ``[B, I, C]`` and sagittal ``[B, I, R]``."""
    rows = torch.arange(len(crops), device=crops.device)
    i, r, c = marker_irc.unbind(1)
    return {"axial": crops[rows, i], "coronal": crops[rows, :, r], "sagittal": crops[rows, :, :, c]}


class ConfidentMistakes(Metric):
    """The ``k`` most confident mistakes of each true class, with three slices through each candidate.

    A mistake's confidence is the probability of the class it was wrongly given. Each process
    keeps only its own top ``k`` per class; the lists are gathered at the end, so the montage shows
    the worst mistakes of the whole split, not of one rank's share.

    Args:
        num_classes: classes of the task.
        crop_shape: the (I, R, C) voxels of the crops the model sees.
        k: mistakes kept per true class.
    """

    full_state_update = False
    PARTS = ("score", "predicted", "index", "image", "center", "marker", "voxel_mm", *PLANES)

    def __init__(self, num_classes: int, crop_shape: tuple[int, int, int], k: int = 8) -> None:
        super().__init__()
        self.num_classes, self.crop_shape, self.k = num_classes, tuple(int(n) for n in crop_shape), k
        depth, rows, columns = self.crop_shape
        self.plane_shapes = {"axial": (rows, columns), "coronal": (depth, columns), "sagittal": (depth, rows)}
        for true_class in range(num_classes):
            for part in self.PARTS:
                self.add_state(f"c{true_class}_{part}", default=[], dist_reduce_fx="cat")

    def _gathered(self, true_class: int) -> dict[str, torch.Tensor]:
        widths = {
            "center": 3,
            "marker": 3,
            "voxel_mm": 3,
            **{plane: int(np.prod(shape)) for plane, shape in self.plane_shapes.items()},
        }
        return {
            part: cat_state(getattr(self, f"c{true_class}_{part}"), torch.float64, widths.get(part))
            for part in self.PARTS
        }

    def update(
        self,
        predicted: torch.Tensor,
        score: torch.Tensor,
        label: torch.Tensor,
        index: torch.Tensor,
        image: torch.Tensor,
        center_xyz: torch.Tensor,
        voxel_mm: torch.Tensor,
        crops: torch.Tensor,
        marker_irc: torch.Tensor,
    ) -> None:
        """Per sample: ``predicted`` class and its probability ``score``, true ``label``, and what
        identifies and shows it (cache ``index``, ``image``, ``center_xyz``, the crop's ``voxel_mm``,
        the ``crops`` [B, I, R, C] and the candidate's voxel ``marker_irc`` in them)."""
        wrong = predicted != label
        marker = voxel_inside(marker_irc, crops.shape[1:])
        picked_crops, picked_marker = crops[wrong], marker[wrong]
        new = {
            "score": score[wrong],
            "predicted": predicted[wrong],
            "index": index[wrong],
            "image": image[wrong],
            "center": center_xyz[wrong],
            "marker": picked_marker,
            "voxel_mm": voxel_mm[wrong],
            **{
                plane: pixels.flatten(1)
                for plane, pixels in planes_through(picked_crops, picked_marker).items()
            },
        }
        label = label[wrong]
        for true_class in range(self.num_classes):
            picked = label == true_class  # set even when empty: every process then has a state to gather
            old = self._gathered(true_class)
            merged = {
                part: torch.cat([old[part].to(new[part].device), new[part][picked].double()])
                for part in self.PARTS
            }
            order = merged["score"].argsort(descending=True)[: self.k]
            for part in self.PARTS:
                setattr(self, f"c{true_class}_{part}", [merged[part][order]])

    def compute(self) -> list[dict[str, np.ndarray]]:
        """For each true class, its mistakes, most confident first (numpy arrays; each plane
        ``[n, rows, columns]``)."""
        result = []
        for true_class in range(self.num_classes):
            parts = self._gathered(true_class)
            order = parts["score"].argsort(descending=True)[: self.k]
            picked = {part: value[order].cpu().numpy() for part, value in parts.items()}
            for plane, shape in self.plane_shapes.items():
                picked[plane] = picked[plane].reshape(-1, *shape)
            for part in ("predicted", "index", "image", "marker"):
                picked[part] = picked[part].astype(np.int64)
            result.append(picked)
        return result
