"""Train/validation splits and epoch orders: pure functions of indices, labels and a seed.

Splits follow LUNA16.md: every ``val_stride``-th item goes to validation, starting with the first.
Striding over split groups sorted by id (LUNA16: series by uid, chapter 14) keeps every scan in
one set; striding over the rows in table order (chapter 11) does not. LUNA16's own ten folds are
its subsets.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SplitBy = Literal["group", "row", "fold"]


def stride_split(count: int, val_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` positions in ``range(count)``: every ``val_stride``-th (from 0) to validation."""
    if val_stride < 2:
        raise ValueError(
            f"val_stride={val_stride}: must be at least 2 (every val_stride-th item is validation)"
        )
    positions = np.arange(count)
    is_val = positions % val_stride == 0
    return positions[~is_val], positions[is_val]


def split_items(
    group_of_item: np.ndarray,
    fold_of_item: np.ndarray,
    split_by: SplitBy,
    val_stride: int = 10,
    val_fold: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split items (crops in table order) into ``(train, val)`` item positions.

    Args:
        group_of_item: for each item, its split group (LUNA16: its series uid).
        fold_of_item: for each item, its fold (LUNA16: its subset number; -1 for none).
        split_by: ``"group"`` strides over the groups sorted by id; ``"row"`` over the items;
            ``"fold"`` puts the items of fold ``val_fold`` in validation (LUNA16's subsets).
        val_stride: every ``val_stride``-th group or item goes to validation.
        val_fold: the validation fold when ``split_by="fold"``.
    """
    if split_by == "row":
        return stride_split(len(group_of_item), val_stride)
    if split_by == "group":
        groups = np.unique(group_of_item)  # sorted
        _, val_groups = stride_split(len(groups), val_stride)
        is_val = np.isin(group_of_item, groups[val_groups])
    elif split_by == "fold":
        folds = sorted(set(np.asarray(fold_of_item).tolist()) - {-1})
        if val_fold not in folds:
            raise ValueError(
                f"val_fold={val_fold}: no image with rows lies in that fold; the folds are {folds}"
            )
        is_val = np.asarray(fold_of_item) == val_fold
    else:
        raise ValueError(f"split_by={split_by!r}: expected 'group', 'row' or 'fold'")
    positions = np.arange(len(group_of_item))
    return positions[~is_val], positions[is_val]


def epoch_order(
    labels: np.ndarray,
    negatives_per_positive: int,
    length: int,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """Positions into ``labels`` for one training epoch, reshuffled per (seed, epoch).

    Two classes with ``negatives_per_positive = N > 0``: the order cycles through freshly shuffled
    positives and negatives as the book's ``ratio_int`` does: position ``k`` is a positive when
    ``k % (N + 1) == 0``, so every epoch has one positive per N negatives whatever the natural ratio.
    More classes with ``N = 1``: position ``k`` draws from class ``k % C``, each class shuffled and
    cycled, so every class is seen equally often. ``N = 0``: a shuffle of all items (repeated when
    ``length`` exceeds them), keeping the natural ratio.
    """
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive={negatives_per_positive}: must be >= 0")
    rng = np.random.default_rng([seed, epoch])
    if negatives_per_positive == 0:
        rounds = -(-length // len(labels))
        return np.concatenate([rng.permutation(len(labels)) for _ in range(rounds)])[:length]
    classes = int(labels.max()) + 1 if len(labels) else 0
    if classes > 2:
        if negatives_per_positive != 1:
            raise ValueError(
                f"negatives_per_positive={negatives_per_positive}: with {classes} classes use 1 "
                "(every class equally often) or 0 (the natural ratio)"
            )
        members = [rng.permutation(np.flatnonzero(labels == c)) for c in range(classes)]
        empty = [c for c, m in enumerate(members) if len(m) == 0]
        if empty:
            raise ValueError(
                f"balanced epochs need every class in the training split; classes {empty} have no item"
            )
        k = np.arange(length)
        picked = np.empty(length, dtype=np.int64)
        for c, m in enumerate(members):
            at = k % classes == c
            picked[at] = m[(k[at] // classes) % len(m)]
        return picked
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
