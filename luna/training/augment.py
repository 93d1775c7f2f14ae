"""Batched 3D augmentation on the device, and the exact crop that replaces it at evaluation.

The book augments one crop at a time in CPU workers (an ``affine_grid`` + ``grid_sample`` per
sample). Here the whole batch is transformed in one call after it reaches the device
(``LightningModule.on_after_batch_transfer``). The transforms are the book's chapter 12 set, in
``affine_grid`` units of the model's crop: a flip per axis, an offset and a scale on all three
axes, a rotation about the I axis, then Gaussian noise in HU.

Presizing: training batches may hold a larger *context* crop than the model sees, with
``window_irc`` saying where the model's crop (cut by the reference rule, ``luna.data.volume.crop_starts``)
lies inside it. The augmentation samples from the whole context, so offsets and rotations see real
voxels instead of inventing border voxels.

Exactness: with every magnitude at zero, no resampling happens at all: the output is an integer
slice of the input, bit for bit. Flips alone are ``torch.flip``, also exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augmentation:  # not frozen: Lightning walks hyperparameters with apply_to_collection
    """What to randomise per training sample; every field at zero/False is the identity.

    Args:
        flip_irc: flip each axis (slices, rows, columns) with probability 0.5 when True.
        offset: maximum shift, as a fraction of the crop's half-width (book: 0.1), on each axis.
        scale: maximum relative zoom on each axis (book: 0.2).
        rotate: rotate about the I axis by an angle uniform in [0, 2 pi) when True.
        noise_hu: standard deviation of additive Gaussian noise in HU (book: 25).
    """

    flip_irc: tuple[bool, bool, bool] = (False, False, False)
    offset: float = 0.0
    scale: float = 0.0
    rotate: bool = False
    noise_hu: float = 0.0

    @property
    def resamples(self) -> bool:
        """Whether the transform needs interpolation (anything beyond flips and noise)."""
        return self.offset > 0 or self.scale > 0 or self.rotate

    @classmethod
    def book(cls) -> Augmentation:
        """The book's chapter 12 settings."""
        return cls(flip_irc=(True, True, True), offset=0.1, scale=0.2, rotate=True, noise_hu=25.0)


def window_crop(crops: torch.Tensor, window_irc: torch.Tensor, width_irc: tuple[int, int, int]) -> torch.Tensor:
    """The model's crops ``[B, C, *width_irc]`` cut exactly (no interpolation) at ``window_irc`` ``[B, 3]``."""
    if tuple(crops.shape[2:]) == tuple(width_irc):
        return crops
    axes = [window_irc[:, k, None] + torch.arange(w, device=crops.device) for k, w in enumerate(width_irc)]
    b = torch.arange(crops.shape[0], device=crops.device)[:, None, None, None]
    gathered = crops.permute(0, 2, 3, 4, 1)[b, axes[0][:, :, None, None], axes[1][:, None, :, None], axes[2][:, None, None, :]]
    return gathered.permute(0, 4, 1, 2, 3).contiguous()


def flip(crops: torch.Tensor, dims_irc: tuple[int, ...]) -> torch.Tensor:
    """Flip every crop of the batch along the given axes (0 = I, 1 = R, 2 = C)."""
    return crops.flip([2 + d for d in dims_irc]) if dims_irc else crops


def _random_flips(augmentation: Augmentation, batch: int, device: torch.device) -> torch.Tensor:
    """``[B, 3]`` booleans: which axes each sample flips."""
    enabled = torch.tensor(augmentation.flip_irc, device=device)
    return (torch.rand(batch, 3, device=device) < 0.5) & enabled


def _affine(augmentation: Augmentation, flips: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 4]`` book transforms in the model crop's normalised (x, y, z) = (C, R, I) frame."""
    batch, device = flips.shape[0], flips.device
    signs = 1.0 - 2.0 * flips.flip(1).float()  # (I, R, C) -> (x, y, z)
    scale = 1.0 + augmentation.scale * (torch.rand(batch, 3, device=device) * 2 - 1)
    linear = torch.diag_embed(signs * scale)
    if augmentation.rotate:
        angle = torch.rand(batch, device=device) * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.zeros(batch, 3, 3, device=device)
        rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
        rotation[:, 2, 2] = 1.0
        linear = linear @ rotation
    shift = augmentation.offset * (torch.rand(batch, 3, device=device) * 2 - 1)
    return torch.cat([linear, shift[:, :, None]], dim=2)


def augment(
    crops: torch.Tensor, window_irc: torch.Tensor, width_irc: tuple[int, int, int], augmentation: Augmentation
) -> torch.Tensor:
    """Randomly transformed model crops ``[B, C, *width_irc]`` from (context) crops, on their device.

    ``window_irc`` ``[B, 3]`` is where the untransformed model crop lies in each context crop.
    Draws from torch's global generator on the crops' device, so a seeded run repeats itself.
    """
    batch, device = crops.shape[0], crops.device
    flips = _random_flips(augmentation, batch, device)
    if augmentation.resamples:
        out = _resample(crops, window_irc, width_irc, _affine(augmentation, flips))
    else:
        out = window_crop(crops, window_irc, width_irc)
        for dim in range(3):
            if augmentation.flip_irc[dim]:
                mask = flips[:, dim].view(-1, 1, 1, 1, 1)
                out = torch.where(mask, out.flip(2 + dim), out)
    if augmentation.noise_hu > 0:
        out = out + torch.randn_like(out) * augmentation.noise_hu
    return out


def _resample(crops: torch.Tensor, window_irc: torch.Tensor, width_irc: tuple[int, int, int],
              transform: torch.Tensor) -> torch.Tensor:
    """Trilinear ``grid_sample`` (border padding) of the transformed model-crop window of each context."""
    context = crops.shape[2:]
    starts = window_irc.float()
    width = torch.tensor(width_irc, device=crops.device, dtype=torch.float32)
    size = torch.tensor(context, device=crops.device, dtype=torch.float32)
    # model-crop normalised coords u -> context normalised coords: u * w/W + (2 * start + w)/W - 1, in (x, y, z)
    ratio = (width / size).flip(0)
    center = ((2 * starts + width) / size - 1).flip(1)
    theta = transform.clone()
    theta[:, :, :3] = ratio[:, None] * transform[:, :, :3]
    theta[:, :, 3] = ratio * transform[:, :, 3] + center
    grid = F.affine_grid(theta, [crops.shape[0], crops.shape[1], *width_irc], align_corners=False)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mixup(crops: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup of a batch with a shuffled copy of itself: ``(mixed crops, partner [B], weight [B])``.

    Each sample keeps weight ``w = max(l, 1 - l)``, ``l ~ Beta(alpha, alpha)``, so the first sample
    dominates and its label is the one reported; the loss is ``w * loss(label) + (1 - w) *
    loss(label[partner])``. Draws from torch's global generator.
    """
    batch = crops.shape[0]
    weight = torch.distributions.Beta(alpha, alpha).sample((batch,)).to(crops.device)
    weight = torch.maximum(weight, 1 - weight)
    partner = torch.randperm(batch, device=crops.device)
    shaped = weight.view(-1, *[1] * (crops.ndim - 1))
    return shaped * crops + (1 - shaped) * crops[partner], partner, weight
