"""A whole volume to a probability map: what validation, ``luna.detect`` and an exported bundle do
with a segmentation network, the same way.

MONAI's ``sliding_window_inference`` runs the network on overlapping windows of the network's
training patch size and blends them with Gaussian weights (nnU-Net's predictor), so a volume of
any size is segmented with the context the network learnt from, and the window borders (where a
network sees least) weigh least.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def normalised(stored: torch.Tensor, intensity: Sequence[float]) -> torch.Tensor:
    """Stored int16 values as the network takes them: the intensity window mapped onto [-1, 1]
    (``intensity`` = window low, window high, scale)."""
    low, high, scale = (float(v) for v in intensity)
    return (stored.float() / scale - (low + high) / 2) / ((high - low) / 2)


@torch.no_grad()
def probability_map(
    network: nn.Module,
    image: torch.Tensor,
    window_irc: Sequence[int],
    overlap: float = 0.25,
    windows_per_batch: int = 4,
) -> torch.Tensor:
    """``[I, R, C]`` the probability of each voxel of ``image`` (``[1, 1, I, R, C]``, normalised)
    belonging to a nodule, from ``network``'s logits (one channel)."""
    from monai.inferers import sliding_window_inference  # here: classifying points never imports MONAI

    logits = sliding_window_inference(
        image, list(window_irc), windows_per_batch, network, overlap=overlap, mode="gaussian"
    )
    return torch.sigmoid(logits[0, 0].float())
