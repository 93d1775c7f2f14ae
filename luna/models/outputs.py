"""What a network's output means, whatever the network: the one convention luna reads it by."""

from __future__ import annotations

import torch
from torch import nn


def logits_of(network: nn.Module, inputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A network's logits: the book's LunaModel returns ``(logits, probabilities)``, others logits."""
    out = network(inputs)
    return out[0] if isinstance(out, (tuple, list)) else out
