"""Crops in millimetres: physical-space crops, several views of a candidate, and their faults.

Scans of very different spacing and direction hold balls of known diameter at known, off-grid
millimetre centres; whatever the scan, a physical-space crop must show each ball centred on the
crop's middle voxel and of the same size in voxels.
"""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from luna.data.cache.build import CacheSettings, build_cache, cache_path
from luna.data.cache.read import CacheBuildError, CropCache
from luna.data.crops import View, resample_crops
from luna.data.synthetic import ball
from luna.data.volume import irc_to_xyz
from luna.luna16.sources import Luna16Candidates
from luna.points.datamodule import PointsDataModule
from luna.training.augment import Augmentation, ViewCrops, augment_views
from tests.oracles import native_settings

BACKGROUND, BALL = -900.0, 100.0
ROTATED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
# (spacing I, R, C in mm, direction, file suffix): MRI-like thick slices, isotropic, LUNA16's
# extremes, a flipped and a rotated direction, MetaImage and NIfTI
SCANS = [
    ((3.0, 0.5, 0.5), np.eye(3), ".nii.gz"),
    ((1.0, 1.0, 1.0), np.diag([-1.0, -1.0, 1.0]), ".mhd"),
    ((2.5, 0.7, 0.7), ROTATED, ".nii.gz"),
    ((0.625, 0.9, 0.9), np.eye(3), ".mhd"),
]
DIAMETERS = (10.0, 16.0)


def write_ball_scans(folder: Path, seed: int = 0) -> tuple[Path, list[float]]:
    """One scan per entry of ``SCANS`` with a ball of each diameter 30 mm apart; a points CSV with
    one row per ball (label: the ball's number) and the diameters in row order."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    lines, diameters = ["image,coordX,coordY,coordZ,label\n"], []
    origin = np.array([-30.0, 12.5, 101.0])
    for k, (spacing_irc, direction, suffix) in enumerate(SCANS):
        spacing = np.array(spacing_irc)
        shape = np.ceil(np.array([60.0, 60.0, 90.0]) / spacing).astype(int)
        volume = np.full(tuple(shape), BACKGROUND, dtype=np.float32)
        for label, diameter in enumerate(DIAMETERS):
            center_irc = np.array([30.0, 30.0, 25.0 + 35.0 * label]) / spacing + rng.uniform(-0.5, 0.5, 3)
            ball(volume, center_irc, diameter / 2, BALL, spacing.astype(np.float32), float(spacing.min()))
            x, y, z = irc_to_xyz(center_irc, origin, spacing[::-1], direction)
            lines.append(f"images/scan{k}{suffix},{x!r},{y!r},{z!r},{label}\n")
            diameters.append(diameter)
        image = sitk.GetImageFromArray(np.rint(volume).astype(np.int16))
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        image.SetOrigin(tuple(origin))
        image.SetDirection(tuple(direction.ravel()))
        sitk.WriteImage(image, str(folder / "images" / f"scan{k}{suffix}"))
    (folder / "points.csv").write_text("".join(lines))
    return folder / "points.csv", diameters


def centroid_and_volume(crop: np.ndarray) -> tuple[np.ndarray, int]:
    """The intensity-weighted centre of the bright ball and its voxels above the mid value."""
    weight = np.clip(crop.astype(np.float64) - BACKGROUND, 0, None)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in crop.shape], indexing="ij"), axis=-1)
    center = (grid * weight[..., None]).reshape(-1, 3).sum(0) / weight.sum()
    return center, int((crop > (BACKGROUND + BALL) / 2).sum())


@pytest.fixture(scope="module")
def ball_scans(tmp_path_factory) -> tuple[Path, list[float]]:
    return write_ball_scans(tmp_path_factory.mktemp("balls"))


@pytest.mark.parametrize("spacing_mm", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.75)])
def test_every_ball_is_centred_and_of_the_same_size_whatever_the_scan(ball_scans, tmp_path, spacing_mm):
    points_csv, diameters = ball_scans
    width = (24, 24, 24) if spacing_mm == (1.0, 1.0, 1.0) else (12, 48, 32)
    dm = PointsDataModule(
        points_csv=points_csv, cache_dir=tmp_path, width_irc=width, spacing_mm=spacing_mm, build_processes=1
    )
    dm.prepare_data()
    dm.setup()
    cache = dm.cache
    assert len(cache) == len(diameters) == 2 * len(SCANS)
    middle = np.array(width) // 2
    volumes: dict[float, list[float]] = {d: [] for d in DIAMETERS}
    for k in range(len(cache)):
        crop = cache.crop(k)
        assert crop.shape == width and np.array_equal(cache.offset_irc()[k], middle)
        center, voxels = centroid_and_volume(crop)
        assert np.abs(center - middle).max() < 0.35, (k, center - middle)  # within a third of a voxel
        diameter = diameters[int(cache.column("row")[k])]
        true = 4 / 3 * math.pi * (diameter / 2) ** 3 / math.prod(spacing_mm)
        assert abs(voxels / true - 1) < 0.12, (k, voxels / true)
        volumes[diameter].append(voxels)
    for diameter, counts in volumes.items():
        assert max(counts) / min(counts) < 1.15, (diameter, counts)  # the same size in every scan


def test_linear_resampling_equals_simpleitks_at_the_edges_and_with_a_rotated_direction():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 300, (30, 50, 60)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    spacing_xyz, origin = np.array([0.7, 0.8, 2.5]), np.array([-10.0, 5.0, 30.0])
    image.SetSpacing(tuple(spacing_xyz))
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(ROTATED.ravel()))
    width, target_irc = (9, 14, 11), np.array([1.1, 1.3, 0.9])
    centers_xyz = np.array(
        [[-20.0, 10.0, 60.0], [-40.0, 4.0, 31.0], [-10.3, 40.2, 100.0]]
    )  # inside, at an edge, a corner
    center_irc = (np.linalg.solve(ROTATED, (centers_xyz - origin).T).T / spacing_xyz)[:, ::-1]
    crops = resample_crops(values, center_irc, spacing_xyz[::-1], width, target_irc, fill=-1000.0)
    for crop, center in zip(crops, centers_xyz, strict=True):
        resampler = sitk.ResampleImageFilter()
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(-1000.0)
        resampler.SetOutputDirection(image.GetDirection())
        resampler.SetOutputSpacing(tuple(target_irc[::-1]))
        resampler.SetSize(list(width[::-1]))
        resampler.SetOutputOrigin(tuple(center - ROTATED @ ((np.array(width) // 2) * target_irc)[::-1]))
        expected = sitk.GetArrayFromImage(resampler.Execute(image))
        assert np.abs(crop - expected).max() < 1e-2
    assert (crops[1] == -1000.0).any() and (crops[2] == -1000.0).mean() > 0.3


def test_a_crop_reaching_outside_its_scan_is_filled_with_air_and_keeps_its_centre(ball_scans, tmp_path):
    points_csv, _ = ball_scans
    dm = PointsDataModule(
        points_csv=points_csv,
        cache_dir=tmp_path,
        width_irc=(24, 24, 24),
        spacing_mm=(4.0, 4.0, 1.0),
        build_processes=1,
    )  # 96 mm on I and R: beyond the 60 mm scans
    dm.prepare_data()
    dm.setup()
    for k in range(len(dm.cache)):
        crop = dm.cache.crop(k)
        assert (crop[0] == -1000).all() and (crop[-1] == -1000).all()  # padded with air, not shifted inside
        center, _ = centroid_and_volume(np.where(crop == -1000, BACKGROUND, crop))
        assert np.abs(center - 12).max() < 0.35


def test_native_crops_stay_the_books(phantom_dir, phantom_cache, tmp_path):
    """``spacing_mm: null`` is the book's crop: the session cache (native) against a direct cut."""
    from luna.data.volume import Volume
    from tests.oracles import crop_start

    cache = CropCache(phantom_cache)
    assert cache.views == [View((32, 48, 48))]
    volumes = {}
    for k in range(0, len(cache), 7):
        path = cache.image_paths[int(cache.image_of[k])]
        volume = volumes.setdefault(path, Volume.read(path))
        center_irc = volume.xyz_to_irc(cache.center_xyz[k])
        start = crop_start(center_irc, (32, 48, 48), volume.voxels.shape)
        expected = volume.voxels[tuple(slice(s, s + w) for s, w in zip(start, (32, 48, 48), strict=True))]
        assert np.array_equal(cache.crop(k), expected)


def test_the_cache_key_covers_the_spacing_and_a_damaged_physical_crop_is_cut_again(
    phantom_dir, tmp_path, caplog
):
    source = Luna16Candidates(phantom_dir)
    one = CacheSettings((View((16, 32, 32), (1.0, 1.0, 1.0)),))
    assert cache_path(tmp_path, source, one) != cache_path(tmp_path, source, native_settings((16, 32, 32)))
    assert cache_path(tmp_path, source, one) != cache_path(
        tmp_path, source, CacheSettings((View((16, 32, 32), (1.0, 1.0, 1.25)),))
    )
    path = build_cache(source, tmp_path, one)
    original = CropCache(path)
    intact = [original.crop(k).copy() for k in range(len(original))]
    npy = sorted((path / "images").glob("*.view0.npy"))[0]
    data = bytearray(npy.read_bytes())
    page = 4096
    data[-2 * page : -page], data[-page:] = (
        data[-page:],
        data[-2 * page : -page],
    )  # two pages swapped inside a crop
    npy.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        served = [CropCache(path).crop(k).copy() for k in range(len(original))]
    assert all(np.array_equal(a, b) for a, b in zip(served, intact, strict=True))
    assert any("checksum mismatch" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (-1.0, 1.0, 1.0), (1.0, 1.0)])
def test_a_bad_spacing_is_an_error_naming_the_option(spacing, tmp_path):
    with pytest.raises(ValueError, match=r"^data\.spacing_mm=.*(finite, positive|three spacings)"):
        PointsDataModule(points_csv=tmp_path / "points.csv", cache_dir=tmp_path, spacing_mm=spacing)
    with pytest.raises(
        ValueError, match=r"^data\.extra_views\[0\]\.spacing_mm=.*(finite, positive|three spacings)"
    ):
        PointsDataModule(
            points_csv=tmp_path / "points.csv",
            cache_dir=tmp_path,
            spacing_mm=(1.0, 1.0, 1.0),
            extra_views=[View((16, 16, 16), spacing)],
        )


def test_a_view_larger_than_every_scan_is_an_error_naming_it(ball_scans, tmp_path):
    points_csv, _ = ball_scans
    dm = PointsDataModule(
        points_csv=points_csv,
        cache_dir=tmp_path,
        width_irc=(16, 16, 16),
        spacing_mm=(1, 1, 1),
        extra_views=[View((64, 64, 64), (2.0, 2.0, 2.0))],
        build_processes=1,
    )
    with pytest.raises(
        CacheBuildError,
        match=r"^data\.extra_views\[0\]: 64x64x64 voxels at 2x2x2 mm \(128x128x128 mm\) "
        r"is larger than every volume",
    ):
        dm.prepare_data()


@pytest.mark.parametrize(
    "spacing, message",
    [
        ((1e-6, 1e-6, 1e-6), "spans less than one voxel of every volume along some axis"),
        ((1e6, 1.0, 1.0), "is larger than every volume"),
    ],
)
def test_a_unit_mistake_in_the_spacing_is_refused_before_any_crop_is_cut(
    ball_scans, tmp_path, spacing, message
):
    points_csv, _ = ball_scans
    dm = PointsDataModule(
        points_csv=points_csv,
        cache_dir=tmp_path / "cache",
        width_irc=(16, 16, 16),
        spacing_mm=spacing,
        build_processes=1,
    )
    with pytest.raises(
        CacheBuildError, match=rf"^the first view \(data\.width_irc, data\.spacing_mm\): .*{message}"
    ):
        dm.prepare_data()
    assert not list((tmp_path / "cache").rglob("*.npy"))  # refused from the headers, before cutting


def test_views_of_one_candidate_are_augmented_together():
    torch.manual_seed(0)
    base = torch.randn(4, 1, 48, 48, 48) * 300
    small = ViewCrops(
        base[:, :, 8:40, 8:40, 8:40].contiguous(),
        torch.full((4, 3), 8),
        (16, 16, 16),
        torch.full((4, 3), 16),
        torch.ones(4, 3),
    )  # candidate at voxel 16 of its 32-voxel context
    large = ViewCrops(base, torch.full((4, 3), 8), (32, 32, 32), torch.full((4, 3), 24), torch.ones(4, 3))
    augmentation = Augmentation(flip_irc=(True, True, True), offset=0.1, scale=0.2, rotate=True)
    out_small, out_large = augment_views([small, large], augmentation)
    # the same voxels of the same volume: the middle of the large view is the small view
    assert (out_large[:, :, 8:24, 8:24, 8:24] - out_small).abs().max() < 0.05  # float32 grid coordinates
    twin_a, twin_b = augment_views([small, small], augmentation)
    assert torch.equal(twin_a, twin_b)


def test_the_manifest_records_the_views_and_each_image_spacing(ball_scans, tmp_path):
    points_csv, _ = ball_scans
    dm = PointsDataModule(
        points_csv=points_csv,
        cache_dir=tmp_path,
        width_irc=(16, 16, 16),
        spacing_mm=(1, 1, 1),
        extra_views=[View((16, 16, 16))],
        build_processes=1,
    )
    dm.prepare_data()
    dm.setup()
    manifest = json.loads((dm.cache.path / "manifest.json").read_text())
    assert manifest["views"] == [
        {"width_irc": [16, 16, 16], "spacing_mm": [1.0, 1.0, 1.0]},
        {"width_irc": [16, 16, 16], "spacing_mm": None},
    ]
    recorded = np.array(sorted(tuple(entry["spacing_irc"]) for entry in manifest["images"]))
    assert np.allclose(recorded, sorted(spacing for spacing, _, _ in SCANS), atol=1e-6)  # NIfTI keeps float32
    sample = dm.val_dataset[0]
    assert sample["crop"].shape == sample["extra_views"][0]["crop"].shape == (16, 16, 16)
    assert np.array_equal(sample["voxel_mm"], [1.0, 1.0, 1.0])
    assert np.isclose(recorded, sample["extra_views"][0]["voxel_mm"], atol=1e-6).all(axis=1).any()


def test_physical_multi_view_crops_train_validate_and_predict_through_the_cli(phantom_dir, tmp_path):
    from luna.cli.fit import main
    from tests.helpers import tiny_config

    config = tiny_config(
        tmp_path / "views.yaml",
        phantom_dir,
        tmp_path / "cache",
        tmp_path / "runs",
        width_irc=[16, 32, 32],
        spacing_mm=[1.25, 1.0, 1.0],
        context_irc=[24, 40, 40],
        extra_views=[{"width_irc": [16, 16, 16], "spacing_mm": [2.5, 2.5, 2.5]}],
    )
    augmented = [
        "--model.augmentation.flip_irc=[true, true, true]",
        "--model.augmentation.offset=0.1",
        "--model.augmentation.rotate=true",
        "--model.mixup_alpha=0.4",
    ]
    cli = main(["--config", str(config), *augmented])
    assert type(cli.model.network).__name__ == "MultiViewLunaModel"
    assert cli.model.hparams.input_widths_irc == [[16, 32, 32], [16, 16, 16]]
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "predictions.csv"
    cli = main(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={checkpoint}",
            f"--predictions.path={out}",
            "--evaluation.tta_flips=[[], [2]]",
        ]
    )
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + len(cli.datamodule.eval_dataset)
    cli = main(["validate", "--config", str(config), f"--ckpt_path={checkpoint}"])
    assert 0.0 <= cli.trainer.callback_metrics["val/cpm"] <= 1.0


def test_the_luna16_mm_config_asks_for_three_views_in_millimetres(capsys):
    import yaml

    from luna.cli.fit import main

    with pytest.raises(SystemExit):
        main(["--config", "configs/luna16.yaml", "--config", "configs/luna16_mm.yaml", "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert data["data_dir"] == "/path/to/LUNA16" and data["spacing_mm"] == [1.25, 0.7, 0.7]
    views = [(data["width_irc"], data["spacing_mm"])] + [
        (v["width_irc"], v["spacing_mm"]) for v in data["extra_views"]
    ]
    assert views == [
        ([16, 32, 32], [1.25, 0.7, 0.7]),
        ([32, 48, 48], [1.25, 0.7, 0.7]),
        ([32, 48, 48], [2.5, 1.4, 1.4]),
    ]


def test_a_single_crop_network_given_several_views_is_a_one_line_error(phantom_dir, tmp_path):
    import subprocess
    import sys

    from tests.helpers import tiny_config

    config = tiny_config(
        tmp_path / "views.yaml",
        phantom_dir,
        tmp_path / "cache",
        tmp_path / "runs",
        width_irc=[16, 32, 32],
        extra_views=[{"width_irc": [16, 16, 16], "spacing_mm": [2, 2, 2]}],
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.fit",
            "--config",
            str(config),
            "--model.network=luna.models.LunaModel",
            "--model.network.width_irc=[16, 32, 32]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: model.network=LunaModel takes one crop, but the data gives 2 views"
    ), lines[-5:]
    assert "Traceback" not in result.stderr
