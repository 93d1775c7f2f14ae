"""LunaModel: the book's chapter 11 nodule classifier, with its state-dict keys kept; and its
multi-view form, one LunaModel trunk per view of the candidate.

BatchNorm3d on the single input channel, four blocks of (Conv3d 3x3x3 + ReLU) x 2 + MaxPool3d(2)
with channels 8 -> 16 -> 32 -> 64, then a linear layer to two classes and a softmax beside the
logits. At the default 32x48x48 input the head sees 64 x 2 x 3 x 3 = 1152 features and the model
has 222,220 parameters. Keeping the key names (``tail_batchnorm``, ``block{1..4}.conv{1,2}``,
``head_linear``) lets ``load_book_checkpoint`` read the book's ``{'model_state': ...}`` files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

BLOCK_COUNT = 4
BOOK_WIDTH_IRC = (32, 48, 48)  # the crop the book's model is built for: its head sees 64 x 2 x 3 x 3 features
HeadInit = Literal["kaiming", "zero"]


@runtime_checkable
class Network(Protocol):
    """Any ``torch.nn.Module`` that maps crops ``[B, 1, I, R, C]`` to logits ``[B, classes]`` (or to
    ``(logits, ...)``), given by ``class_path`` in a config: ``luna.models.LunaModel``,
    ``monai.networks.nets.DenseNet121``, your own. A network for several views of each candidate
    (``data.extra_views``) takes a tuple of crops, one per view, and says which with an
    ``input_widths_irc`` attribute (as ``luna.models.MultiViewLunaModel``).

    (A protocol rather than ``nn.Module`` itself, so that ``--help`` does not list every module class
    that happens to be imported.)
    """

    def train(self, mode: bool = True): ...


class LunaBlock(nn.Module):
    """Two 3x3x3 convolutions with ReLU, then a 2x max-pool that halves each axis."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


class LunaTrunk(nn.Module):
    """The book's feature extractor: the input BatchNorm3d and the four blocks (no head).

    Args:
        in_channels: channels of the input crop (1 for CT).
        conv_channels: channels of the first block; each later block doubles them.
        width_irc: crop size (I, R, C); each axis must be divisible by 16 (four 2x pools).
    """

    def __init__(
        self, in_channels: int = 1, conv_channels: int = 8, width_irc: Sequence[int] = BOOK_WIDTH_IRC
    ) -> None:
        super().__init__()
        pool = 2**BLOCK_COUNT
        if len(width_irc) != 3 or any(size % pool or size <= 0 for size in width_irc):
            raise ValueError(
                f"width_irc={list(width_irc)}: every axis must be a positive multiple of {pool} "
                "for LunaModel (four 2x poolings)"
            )
        self.width_irc = tuple(width_irc)
        self.tail_batchnorm = nn.BatchNorm3d(in_channels)
        channels = [in_channels] + [conv_channels * 2**k for k in range(BLOCK_COUNT)]
        for k in range(BLOCK_COUNT):
            self.add_module(f"block{k + 1}", LunaBlock(channels[k], channels[k + 1]))
        self.features = channels[-1] * math.prod(size // pool for size in width_irc)

    @property
    def blocks(self) -> list[LunaBlock]:
        """The convolutional blocks, input side first (used by fine-tuning to freeze by depth)."""
        return [getattr(self, f"block{k + 1}") for k in range(BLOCK_COUNT)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features ``[B, self.features]``."""
        x = self.tail_batchnorm(x)
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


def init_weights(network: nn.Module, head: nn.Linear, head_init: HeadInit) -> None:
    """The book's Kaiming-normal weights (fan_out, ReLU gain; biases uniform in +-1/sqrt(fan_out))
    everywhere, then the head as ``head_init`` says: ``kaiming`` (the book) or ``zero`` (weights
    and bias 0: every class equally likely at the start, a first loss of ln(classes))."""
    for module in network.modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight.data, a=0, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                fan_out = module.weight.shape[0] * math.prod(module.weight.shape[2:])  # out channels x kernel
                bound = 1 / math.sqrt(fan_out)
                nn.init.uniform_(module.bias, -bound, bound)
    if head_init == "zero":
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    elif head_init != "kaiming":
        raise ValueError(f"head_init={head_init!r}: expected 'kaiming' or 'zero'")


class LunaModel(LunaTrunk):
    """The book's LUNA16 candidate classifier.

    Args:
        in_channels: channels of the input crop (1 for CT).
        conv_channels: channels of the first block; each later block doubles them.
        width_irc: crop size (I, R, C) the model is built for; the head's input size follows from
            it, so each axis must be divisible by 16 (four 2x pools).
        num_classes: outputs of the head (2 for the book's nodule / non-nodule).
        head_init: ``zero`` (the default: the head starts at 0, every class equally likely, a first
            loss of ln 2) or ``kaiming`` (the book: Kaiming-normal with fan_out, which starts with
            logits in the tens and first losses of 4 to 10). The zero head was chosen by
            measurement (``scripts/bench_physical.py``; the figures are in ``docs/crops.md``).
            Either way the state-dict keys are the book's, so book checkpoints load.

    ``forward`` returns ``(logits, probabilities)``, both of shape ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        conv_channels: int = 8,
        width_irc: Sequence[int] = BOOK_WIDTH_IRC,
        num_classes: int = 2,
        head_init: HeadInit = "zero",
    ) -> None:
        super().__init__(in_channels, conv_channels, width_irc)
        self.head_linear = nn.Linear(self.features, num_classes)
        self.head_softmax = nn.Softmax(dim=1)
        init_weights(self, self.head_linear, head_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head_linear(super().forward(x))
        return logits, self.head_softmax(logits)


class MultiViewLunaModel(nn.Module):
    """Several views of one candidate (fields of view, spacings), one LunaModel trunk each, their
    features joined before one linear head (the fusion of Dou et al. 2017, on the book's trunk).

    Args:
        input_widths_irc: the crop size of each view, in the data's order.
        in_channels, conv_channels: of every trunk (as ``LunaModel``).
        num_classes: outputs of the head.
        head_init: as ``LunaModel``.

    ``forward`` takes a tuple of crops ``[B, 1, *width]``, one per view, and returns
    ``(logits, probabilities)``.
    """

    def __init__(
        self,
        input_widths_irc: Sequence[Sequence[int]],
        in_channels: int = 1,
        conv_channels: int = 8,
        num_classes: int = 2,
        head_init: HeadInit = "zero",
    ) -> None:
        super().__init__()
        self.input_widths_irc = [tuple(width) for width in input_widths_irc]
        if not self.input_widths_irc:
            raise ValueError("input_widths_irc: a multi-view network needs at least one view")
        self.trunks = nn.ModuleList(
            LunaTrunk(in_channels, conv_channels, width) for width in self.input_widths_irc
        )
        self.head_linear = nn.Linear(sum(trunk.features for trunk in self.trunks), num_classes)
        self.head_softmax = nn.Softmax(dim=1)
        init_weights(self, self.head_linear, head_init)

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(views) != len(self.trunks):
            raise ValueError(f"MultiViewLunaModel has {len(self.trunks)} trunks but got {len(views)} views")
        features = torch.cat([trunk(view) for trunk, view in zip(self.trunks, views, strict=True)], dim=1)
        logits = self.head_linear(features)
        return logits, self.head_softmax(logits)


def book_state_dict(checkpoint: object, source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights inside a book checkpoint dict, with any ``nn.DataParallel`` ``module.`` prefix removed."""
    if not (isinstance(checkpoint, dict) and "model_state" in checkpoint):
        raise ValueError(f"{source}: not a book checkpoint (expected a dict with a 'model_state' entry)")
    return {key.removeprefix("module."): value for key, value in checkpoint["model_state"].items()}


def load_book_checkpoint(path: str | Path, **model_kwargs) -> LunaModel:
    """A LunaModel with the weights of a book checkpoint (``torch.save({'model_state': ...})``).

    The book's files hold only tensors, numbers and strings, so they load with
    ``weights_only=True``. ``model_kwargs`` go to ``LunaModel`` (e.g. a different ``width_irc``).
    """
    model = LunaModel(**model_kwargs)
    model.load_state_dict(book_state_dict(torch.load(path, map_location="cpu", weights_only=True), path))
    return model
