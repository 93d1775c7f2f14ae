"""Train/validation splits and epoch orders: pure functions of indices, labels and a seed.

Splits follow LUNA16.md: every ``val_stride``-th item goes to validation, starting with the first.
Striding over series sorted by uid (chapter 14) keeps every CT in one set; striding over the
candidate list in reference order (chapter 11) does not. LUNA16's own ten folds are its subsets.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SplitBy = Literal["series", "candidate", "subset"]


def stride_split(count: int, val_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` positions in ``range(count)``: every ``val_stride``-th (from 0) to validation."""
    if val_stride < 2:
        raise ValueError(f"val_stride={val_stride}: must be at least 2 (every val_stride-th item is validation)")
    positions = np.arange(count)
    is_val = positions % val_stride == 0
    return positions[~is_val], positions[is_val]


def split_items(
    series_of_item: np.ndarray,
    subsets_of_series: list[str],
    split_by: SplitBy,
    val_stride: int = 10,
    val_subset: str = "subset0",
) -> tuple[np.ndarray, np.ndarray]:
    """Split items (candidates in reference order) into ``(train, val)`` item positions.

    Args:
        series_of_item: for each item, the number of its series in the uid-sorted series list.
        subsets_of_series: for each series, the folder it lives in (``subset0`` ... ``subset9``).
        split_by: ``"series"`` strides over series sorted by uid; ``"candidate"`` over the items;
            ``"subset"`` puts the series of ``val_subset`` in validation (LUNA16's folds).
        val_stride: every ``val_stride``-th series or candidate goes to validation.
        val_subset: the validation fold when ``split_by="subset"``.
    """
    if split_by == "candidate":
        return stride_split(len(series_of_item), val_stride)
    if split_by == "series":
        _, val_series = stride_split(len(subsets_of_series), val_stride)
    elif split_by == "subset":
        if val_subset not in subsets_of_series:
            raise ValueError(f"val_subset={val_subset!r} holds no scan with candidates; found {sorted(set(subsets_of_series))}")
        val_series = np.flatnonzero(np.asarray(subsets_of_series) == val_subset)
    else:
        raise ValueError(f"split_by={split_by!r}: expected 'series', 'candidate' or 'subset'")
    is_val = np.isin(series_of_item, val_series)
    positions = np.arange(len(series_of_item))
    return positions[~is_val], positions[is_val]


def epoch_order(
    labels: np.ndarray,
    negatives_per_positive: int,
    length: int,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """Positions into ``labels`` for one training epoch, reshuffled per (seed, epoch).

    With ``negatives_per_positive = N > 0`` the order cycles through freshly shuffled positives and
    negatives as the book's ``ratio_int`` does: position ``k`` is a positive when ``k % (N + 1) == 0``,
    so every epoch has one positive per N negatives whatever the natural ratio. With ``N = 0`` it
    is a shuffle of all items (repeated when ``length`` exceeds them), keeping the natural ratio.
    """
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive={negatives_per_positive}: must be >= 0")
    rng = np.random.default_rng([seed, epoch])
    if negatives_per_positive == 0:
        rounds = -(-length // len(labels))
        return np.concatenate([rng.permutation(len(labels)) for _ in range(rounds)])[:length]
    positives = np.flatnonzero(labels)
    negatives = np.flatnonzero(~labels.astype(bool))
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError(
            f"negatives_per_positive={negatives_per_positive} needs positives and negatives in the training "
            f"split; it has {len(positives)} positives and {len(negatives)} negatives"
        )
    positives, negatives = rng.permutation(positives), rng.permutation(negatives)
    k = np.arange(length)
    group = negatives_per_positive + 1
    is_positive = k % group == 0
    positive_rank = k // group
    negative_rank = k - 1 - positive_rank
    return np.where(
        is_positive,
        positives[positive_rank % len(positives)],
        negatives[negative_rank % len(negatives)],
    )
