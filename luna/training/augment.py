"""Batched 3D augmentation on the device, and the exact crop that replaces it at evaluation.

The book augments one crop at a time in CPU workers (an ``affine_grid`` + ``grid_sample`` per
sample). Here the whole batch is transformed in one call after it reaches the device
(``LightningModule.on_after_batch_transfer``). The transforms are the book's chapter 12 set, in
``affine_grid`` units of the model's crop: a flip per axis, an offset and a scale on all three
axes, a rotation about the I axis, then Gaussian noise in HU.

Presizing: training batches may hold a larger *context* crop than the model sees, with
``window_irc`` saying where the model's crop (cut by the reference rule,
``luna.data.crops.crop_starts``) lies inside it. The augmentation samples from the whole context,
so offsets and rotations see real voxels instead of inventing border voxels.

Several views of one candidate (fields of view, spacings) are transformed together
(``augment_views``): the same flips, the same scale and the same rotation about the candidate,
and the same shift in millimetres, so that every view still shows the same point.

Exactness: with every magnitude at zero, no resampling happens at all: the output is an integer
slice of the input, bit for bit. Flips alone are ``torch.flip``, also exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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


def window_crop(
    crops: torch.Tensor, window_irc: torch.Tensor, width_irc: tuple[int, int, int]
) -> torch.Tensor:
    """The model's crops ``[B, C, *width_irc]`` cut exactly (no interpolation) at ``window_irc``
    ``[B, 3]``."""
    if tuple(crops.shape[2:]) == tuple(width_irc):
        return crops
    axes = [window_irc[:, k, None] + torch.arange(w, device=crops.device) for k, w in enumerate(width_irc)]
    b = torch.arange(crops.shape[0], device=crops.device)[:, None, None, None]
    gathered = crops.permute(0, 2, 3, 4, 1)[
        b, axes[0][:, :, None, None], axes[1][:, None, :, None], axes[2][:, None, None, :]
    ]
    return gathered.permute(0, 4, 1, 2, 3).contiguous()


def flip(crops: torch.Tensor, dims_irc: tuple[int, ...]) -> torch.Tensor:
    """Flip every crop of the batch along the given axes (0 = I, 1 = R, 2 = C)."""
    return crops.flip([2 + d for d in dims_irc]) if dims_irc else crops


def _random_flips(augmentation: Augmentation, batch: int, device: torch.device) -> torch.Tensor:
    """``[B, 3]`` booleans: which axes each sample flips."""
    enabled = torch.tensor(augmentation.flip_irc, device=device)
    return (torch.rand(batch, 3, device=device) < 0.5) & enabled


class ViewCrops(NamedTuple):
    """One view of a batch, for ``augment_views``.

    Attributes:
        crops: ``[B, C, *context]`` the cached (context) crops.
        window_irc: ``[B, 3]`` where the untransformed model crop lies in each context crop.
        width_irc: the model crop's size.
        offset_irc: ``[B, 3]`` the candidate's voxel in each context crop (the centre of rotation
            and scaling); None: the middle of the model crop.
        voxel_mm: ``[B, 3]`` each crop's voxel size along I, R, C, which turns a shift into the same
            millimetres in every view; None: shifts are fractions of this view's own half-width.
    """

    crops: torch.Tensor
    window_irc: torch.Tensor
    width_irc: tuple[int, int, int]
    offset_irc: torch.Tensor | None = None
    voxel_mm: torch.Tensor | None = None


def _draw_linear(augmentation: Augmentation, flips: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3]`` flips, scale and rotation about the I axis, in (x, y, z) = (C, R, I) order."""
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
    return linear


def _draw_shift(augmentation: Augmentation, flips: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` shifts as fractions of the (first view's) half-width, in (x, y, z) order."""
    return augmentation.offset * (torch.rand(flips.shape[0], 3, device=flips.device) * 2 - 1)


def _normalised(view: ViewCrops) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate's position in the view's model crop and the crop's half-width in millimetres
    (voxels when the size is unknown), both ``[B, 3]`` in (x, y, z) order."""
    batch, device = view.crops.shape[0], view.crops.device
    width = torch.tensor(view.width_irc, device=device, dtype=torch.float32)
    if view.offset_irc is None:
        center = torch.zeros(batch, 3, device=device)
    else:
        inside = (view.offset_irc - view.window_irc).float()
        center = ((2 * inside + 1) / width - 1).flip(1)
    voxel = torch.ones(batch, 3, device=device) if view.voxel_mm is None else view.voxel_mm.float()
    return center, (width * voxel / 2).flip(1)


def augment_views(views: Sequence[ViewCrops], augmentation: Augmentation) -> list[torch.Tensor]:
    """Randomly transformed model crops ``[B, C, *width_irc]`` of every view, transformed together.

    One draw per sample serves every view: the same flips, scale and rotation (about the
    candidate), and the same shift in millimetres (the book's ``offset`` is a fraction of the
    first view's half-width). Noise is drawn per voxel. Draws from torch's global generator on
    the crops' device, so a seeded run repeats itself.
    """
    first = views[0].crops
    flips = _random_flips(augmentation, first.shape[0], first.device)
    if not augmentation.resamples:
        outputs = [
            _flipped(window_crop(view.crops, view.window_irc, view.width_irc), flips, augmentation)
            for view in views
        ]
    else:
        linear, shift = _draw_linear(augmentation, flips), _draw_shift(augmentation, flips)
        _, first_half = _normalised(views[0])
        shift_mm = shift * first_half
        outputs = []
        for view in views:
            center, half = _normalised(view)
            translation = center - (linear @ center[:, :, None])[:, :, 0] + shift_mm / half
            transform = torch.cat([linear, translation[:, :, None]], dim=2)
            outputs.append(_resample(view.crops, view.window_irc, view.width_irc, transform))
    if augmentation.noise_hu > 0:
        outputs = [out + torch.randn_like(out) * augmentation.noise_hu for out in outputs]
    return outputs


def _flipped(crops: torch.Tensor, flips: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """Each sample flipped along its drawn axes (exact)."""
    for dim in range(3):
        if augmentation.flip_irc[dim]:
            mask = flips[:, dim].view(-1, 1, 1, 1, 1)
            crops = torch.where(mask, crops.flip(2 + dim), crops)
    return crops


def _resample(
    crops: torch.Tensor, window_irc: torch.Tensor, width_irc: tuple[int, int, int], transform: torch.Tensor
) -> torch.Tensor:
    """Trilinear ``grid_sample`` (border padding) of the transformed model-crop window of each context."""
    context = crops.shape[2:]
    starts = window_irc.float()
    width = torch.tensor(width_irc, device=crops.device, dtype=torch.float32)
    size = torch.tensor(context, device=crops.device, dtype=torch.float32)
    # model-crop normalised coords u -> context normalised coords, in (x, y, z):
    # u * w/W + (2 * start + w)/W - 1
    ratio = (width / size).flip(0)
    center = ((2 * starts + width) / size - 1).flip(1)
    theta = transform.clone()
    theta[:, :, :3] = ratio[:, None] * transform[:, :, :3]
    theta[:, :, 3] = ratio * transform[:, :, 3] + center
    grid = F.affine_grid(theta, [crops.shape[0], crops.shape[1], *width_irc], align_corners=False)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mixup(
    crops: torch.Tensor | Sequence[torch.Tensor], alpha: float
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Mixup of a batch with a shuffled copy of itself: ``(mixed crops, partner [B], weight [B])``.

    Each sample keeps weight ``w = max(l, 1 - l)``, ``l ~ Beta(alpha, alpha)``, so the first sample
    dominates and its label is the one reported; the loss is ``w * loss(label) + (1 - w) *
    loss(label[partner])``. Several views (a list) are mixed with the same partners and weights.
    Draws from torch's global generator.
    """
    views = [crops] if isinstance(crops, torch.Tensor) else list(crops)
    batch, device = views[0].shape[0], views[0].device
    weight = torch.distributions.Beta(alpha, alpha).sample((batch,)).to(device)
    weight = torch.maximum(weight, 1 - weight)
    partner = torch.randperm(batch, device=device)
    mixed = []
    for view in views:
        shaped = weight.view(-1, *[1] * (view.ndim - 1))
        mixed.append(shaped * view + (1 - shaped) * view[partner])
    return (mixed[0] if isinstance(crops, torch.Tensor) else mixed), partner, weight
