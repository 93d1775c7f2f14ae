"""List states of torchmetrics metrics as tensors."""

from __future__ import annotations

import torch


def cat_state(
    state: torch.Tensor | list[torch.Tensor], dtype: torch.dtype, width: int | None = None
) -> torch.Tensor:
    """A list state (or its gathered tensor) as one tensor; torchmetrics squeezes some 1-element results."""
    if isinstance(state, list):
        state = torch.cat(state) if state else torch.zeros(0, dtype=dtype)
    return state.reshape(-1) if width is None else state.reshape(-1, width)
