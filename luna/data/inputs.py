"""Where a dataset's files are, and where its caches go: one rule for every DataModule.

A DataModule is given its data (a LUNA16 folder, a CSV) or, when none is given, generates a
phantom of it. Phantom data is never a stand-in for a path that was given (a typo must fail).
A cache goes beside the data it was made from, on the data's own large disk and never in the
code checkout, unless a ``cache_dir`` is given; a phantom, which has no data folder to sit
beside, keeps itself and its caches in the project's ``data_cache/``.
"""

from __future__ import annotations

from pathlib import Path

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
