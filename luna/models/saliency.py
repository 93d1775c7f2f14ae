"""Where a classifier looks: occlusion sensitivity (MONAI's ``monai.visualize.OcclusionSensitivity``)
of its probability, in 3D, for a crop around a point.

Each block of the crop in turn is replaced with air (the low end of the intensity window) and the
drop of P(class) is recorded: the map is high where the model's evidence is. Chosen over
Grad-CAM by measurement (``scripts/bench_saliency.py``, ``docs/benchmarks.md``): on the book's
network Grad-CAM's map has the resolution of the last block (2x3x3 cells for a 32x48x48 crop, 16
voxels each) and peaks within a nodule's radius far less often; occlusion needs only the
network's outputs (it runs on the TorchScript of any network, and on an ensemble with its
test-time flips) at the cost of a few hundred forward passes a crop.

Used by ``luna.infer --saliency`` (``luna.inference.saliency``) and, with
``--evaluation.saliency=true``, by the mistakes montage and the W&B candidate table.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

# Blocks of 4x8x8 voxels (I, R, C: about 5 mm on LUNA16's 1.25x0.7x0.7 mm grid) overlapping by a
# quarter: measured the best trade of peak-in-nodule rate against time (docs/benchmarks.md).
BLOCK = (4, 8, 8)
OVERLAP = 0.25


class _FirstView(torch.nn.Module):
    """The network on the first view (occluded), the other views of the same candidate held fixed."""

    def __init__(self, run: Callable[..., torch.Tensor], others: list[torch.Tensor]) -> None:
        super().__init__()
        self.run, self.others = run, others

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        others = [view.expand(len(first), *view.shape[1:]) for view in self.others]
        return self.run(first, *others)


@torch.no_grad()
def occlusion_map(
    run: Callable[..., torch.Tensor],
    views: list[torch.Tensor],
    class_index: int,
    fill: float,
    batch: int = 64,
    block: int | tuple[int, int, int] = BLOCK,
    overlap: float = OVERLAP,
) -> np.ndarray:
    """``[I, R, C]`` of the first view: P(``class_index``) of the crop minus P with each block around
    a voxel occluded (``fill``), at the first view's voxels. ``views``: one candidate's crops
    ``[1, 1, ...]``; ``block`` voxels (each axis, or I, R, C), neighbours overlapping by ``overlap``."""
    from monai.visualize import OcclusionSensitivity

    model = _FirstView(run, views[1:])
    original = float(model(views[0])[0, class_index])
    sensitivity = OcclusionSensitivity(
        model, mask_size=block, n_batch=batch, verbose=False, mode=fill, overlap=overlap, activate=False
    )
    with warnings.catch_warnings():  # MONAI's indexing, deprecated by torch: not the user's to act on
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        occluded, _ = sensitivity(views[0])
    return (original - occluded[0, class_index]).cpu().numpy()  # the map is [B, classes, I, R, C]
