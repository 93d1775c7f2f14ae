"""Shared fixtures: phantom LUNA16 folders built once per test session, and their crop caches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from luna.data.cache.build import build_cache
from luna.data.crops import DEFAULT_WIDTH_IRC
from luna.data.volume import HU_WINDOW
from luna.luna16.phantom import PhantomSpec, generate_phantom
from luna.luna16.sources import Luna16Candidates
from tests.oracles import native_settings

SMALL_SPEC = PhantomSpec(series=12, seed=7, subsets=4, missing_series=2)
SETTINGS = native_settings(DEFAULT_WIDTH_IRC, HU_WINDOW)


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
    return build_cache(Luna16Candidates(phantom_dir), tmp_path_factory.mktemp("cache"), SETTINGS)


@pytest.fixture(scope="session")
def cache_root(phantom_cache) -> Path:
    """The cache_dir that holds ``phantom_cache`` (for DataModules over ``phantom_dir``)."""
    return phantom_cache.parent


@pytest.fixture(scope="session")
def points_dir(tmp_path_factory) -> Path:
    """A points-CSV dataset: NIfTI volumes, three classes, two volumes per patient."""
    from luna.points.phantom import PointsPhantomSpec, generate_points_phantom

    return generate_points_phantom(
        tmp_path_factory.mktemp("points") / "data",
        PointsPhantomSpec(patients=6, findings_per_image=5, seed=3, shape_irc=(40, 64, 64)),
    )


@pytest.fixture(scope="session")
def segmentation_run(phantom_dir, tmp_path_factory):
    """A segmentation trained a few steps through luna.fit on the test phantom: config, run, CLI."""
    from luna.cli.fit import main
    from tests.helpers import segment_config

    folder = tmp_path_factory.mktemp("segment")
    config = segment_config(folder / "segment.yaml", phantom_dir, folder / "cache", folder / "runs")
    cli = main(["--config", str(config)])
    return config, folder / "runs" / "version_0", cli


@pytest.fixture(scope="session")
def classifier_run(phantom_dir, cache_root, tmp_path_factory):
    """A classifier trained a few steps through luna.fit on the test phantom: config, last checkpoint."""
    from luna.cli.fit import main
    from tests.helpers import tiny_config

    folder = tmp_path_factory.mktemp("classifier")
    config = tiny_config(folder / "tiny.yaml", phantom_dir, cache_root, folder / "runs")
    main(["--config", str(config)])
    return config, folder / "runs" / "version_0" / "checkpoints" / "last.ckpt"
