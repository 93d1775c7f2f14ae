"""Argument types shared by luna's plain-argparse commands (``evaluate``, ``crossval``, ``tune``):
one parser for a list of numbers, so that every command accepts and refuses the same spellings."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection


def integer_list(
    noun: str, example: str = "0,3", allowed: Collection[int] | None = None
) -> Callable[[str], list[int]]:
    """An argparse ``type`` for comma-separated integers (``0,3``), in the order given.

    Not integers, none at all, or one outside ``allowed`` is argparse's one-line error naming the
    option and what was given.
    """

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} like {example} but got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of the {noun}, got {text!r}")
        if allowed is not None and any(value not in allowed for value in values):
            raise argparse.ArgumentTypeError(
                f"{noun} must be among {min(allowed)}-{max(allowed)}, got {text!r}"
            )
        return values

    return parse


def positive_int(text: str) -> int:
    """An argparse ``type`` for a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
