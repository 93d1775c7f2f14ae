"""Shared fixtures: phantom LUNA16 folders built once per test session, and their crop caches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from luna.data.cache import CacheInputs, build_cache
from luna.data.phantom import PhantomSpec, generate_phantom

SMALL_SPEC = PhantomSpec(series=12, seed=7, subsets=4, missing_series=2)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A read-only-by-convention phantom folder; copy it (``phantom_copy``) before changing it."""
    return generate_phantom(tmp_path_factory.mktemp("phantom") / "luna16", SMALL_SPEC)


@pytest.fixture
def phantom_copy(phantom_dir, tmp_path) -> Path:
    """A private copy of the phantom folder that a test may damage."""
    return Path(shutil.copytree(phantom_dir, tmp_path / "luna16"))


@pytest.fixture(scope="session")
def phantom_cache(phantom_dir, tmp_path_factory) -> Path:
    """The crop cache of ``phantom_dir`` at the default width."""
    return build_cache(CacheInputs.from_folder(phantom_dir), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def cache_root(phantom_cache) -> Path:
    """The cache_dir that holds ``phantom_cache`` (for DataModules over ``phantom_dir``)."""
    return phantom_cache.parent
