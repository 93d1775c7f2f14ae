"""Where a dataset's files are, and where its caches go: one rule for every DataModule.

A DataModule is given its data (a LUNA16 folder, a CSV) or, when none is given, generates a
phantom of it. Phantom data is never a stand-in for a path that was given (a typo must fail).
A cache goes beside the data it was made from, on the data's own large disk and never in the
code checkout, unless a ``cache_dir`` is given; a phantom, which has no data folder to sit
beside, keeps itself and its caches in the project's ``data_cache/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generic, TypeVar

PHANTOM_CACHE_DIR = "data_cache"  # relative to the working directory: the project's own cache folder


def resolve_input(
    given: str | Path | None,
    phantom: object | None,
    phantom_folder: str,
    what: str,
    cache_dir: str | Path | None,
    cache_beside: str,
) -> tuple[Path, bool, Path]:
    """``(data path, whether the phantom is generated there, cache folder)``.

    Args:
        given: the data path a user gave, or None.
        phantom: what to generate when ``given`` is None (None: nothing, and ``given`` is required).
        phantom_folder: where the phantom goes, under the cache folder.
        what: the option that gives the data, for the error.
        cache_dir: the cache folder a user gave, or None.
        cache_beside: the cache's folder name in the given data's folder (``given.parent``).

    Raises:
        ValueError: neither data nor a phantom.
    """
    if given is not None:
        return (
            Path(given),
            False,
            Path(cache_dir) if cache_dir is not None else Path(given).parent / cache_beside,
        )
    if phantom is None:
        raise ValueError(f"{what} is required, or phantom to generate phantom data")
    cache = Path(cache_dir) if cache_dir is not None else Path(PHANTOM_CACHE_DIR)
    return cache / phantom_folder, True, cache


SourceT = TypeVar("SourceT")


class DataInputs(Generic[SourceT]):
    """What every luna DataModule does with its inputs, whatever it serves (crops, volumes): a
    dataset subclass says where its rows or volumes come from (``make_source``, built once), may
    make its inputs first (``prepare_inputs``: the phantom generators) and name them
    (``describe_inputs``), and resolves its data path and cache folder by one rule (``input_path``).
    The class using it holds ``cache_dir``."""

    cache_dir: Path | None
    _source: SourceT | None = None

    def make_source(self) -> SourceT:
        """The dataset's rows or volumes (built once per DataModule): what a subclass implements."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_source()")

    def source(self) -> SourceT:
        if self._source is None:
            self._source = self.make_source()
        return self._source

    def prepare_inputs(self) -> None:
        """Hook run by ``prepare_data`` before the cache or store is built (phantom generators use it)."""

    def describe_inputs(self) -> dict[str, str | None]:
        """Where the data came from (recorded beside predictions); subclasses name their inputs."""
        return {}

    def input_path(
        self,
        given: str | Path | None,
        phantom: object | None,
        phantom_folder: str,
        what: str,
        cache_beside: str,
    ) -> tuple[Path, bool]:
        """The data path and whether the phantom is generated there; sets ``cache_dir`` when it is
        None (``resolve_input``: beside the data, or ``data_cache/``)."""
        path, generates, self.cache_dir = resolve_input(
            given, phantom, phantom_folder, what, self.cache_dir, cache_beside
        )
        return path, generates
