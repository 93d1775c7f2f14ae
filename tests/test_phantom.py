import csv
import subprocess
import sys

import numpy as np

from luna.data.cache.build import build_cache
from luna.data.cache.read import CropCache
from luna.data.volume import Geometry
from luna.luna16.phantom import PhantomSpec, _make_scan, generate_phantom
from luna.luna16.release import find_scans
from luna.luna16.sources import Luna16Candidates
from tests.conftest import SETTINGS


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    spec = PhantomSpec(series=3, seed=11, subsets=2, shape_irc=(48, 96, 96))
    a, b = generate_phantom(tmp_path / "a", spec), generate_phantom(tmp_path / "b", spec)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    c = generate_phantom(tmp_path / "c", PhantomSpec(series=3, seed=12, subsets=2, shape_irc=(48, 96, 96)))
    assert (c / "candidates.csv").read_bytes() != (a / "candidates.csv").read_bytes()


def test_layout_and_columns_are_luna16s(phantom_dir):
    assert sorted(p.name for p in phantom_dir.iterdir() if p.is_dir()) == [
        "seg-lungs-LUNA16",
        "subset0",
        "subset1",
        "subset2",
        "subset3",
    ]
    assert {p.name for p in phantom_dir.iterdir() if p.is_file()} == {
        "annotations.csv",
        "annotations_excluded.csv",
        "annotations_with_malignancy.csv",
        "candidates.csv",
        "seriesuids.csv",
        "phantom.json",
    }
    listed = (phantom_dir / "seriesuids.csv").read_text().split()  # the scans on disk, no header
    assert len(listed) == len(set(listed)) and set(listed) == set(find_scans(phantom_dir))
    excluded = list(csv.DictReader(open(phantom_dir / "annotations_excluded.csv")))
    assert excluded and any(
        float(r["diameter_mm"]) == -1 for r in excluded
    )  # unsized findings, as in the release
    assert all(float(r["diameter_mm"]) < 3 for r in excluded if float(r["diameter_mm"]) > 0)
    with open(phantom_dir / "annotations.csv") as f:
        assert next(csv.reader(f)) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    with open(phantom_dir / "candidates.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    on_disk = set(find_scans(phantom_dir))
    listed = {row[0] for row in rows[1:]}
    assert len(listed - on_disk) == 2  # series listed but not on disk
    diameters = [
        float(row[4]) for row in csv.reader(open(phantom_dir / "annotations.csv")) if row[0] != "seriesuid"
    ]
    assert 3.0 <= min(diameters) and max(diameters) <= 30.0


def test_scans_are_int16_with_varied_geometry_and_out_of_field_padding(phantom_dir):
    import SimpleITK as sitk

    images = [sitk.ReadImage(str(p)) for p in sorted(find_scans(phantom_dir).values())]
    assert {image.GetPixelID() for image in images} == {sitk.sitkInt16}
    assert len({image.GetSpacing() for image in images}) == len(images)
    assert len({image.GetOrigin() for image in images}) == len(images)
    assert any(not np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3)) for image in images)
    assert {int(sitk.GetArrayViewFromImage(image).min()) for image in images} == {-3024, -2000}


def test_candidates_lie_near_every_border(phantom_dir, phantom_cache):
    cache = CropCache(phantom_cache)
    scans = {uid: Geometry.read(path).shape_irc for uid, path in find_scans(phantom_dir).items()}
    faces = set()
    for image, center_irc in zip(cache.image_of.tolist(), cache.column("center_irc").tolist(), strict=True):
        shape = scans[cache.image_ids[image]]
        for axis, (center, size) in enumerate(zip(center_irc, shape, strict=True)):
            if center <= 3:
                faces.add((axis, 0))
            if center >= size - 4:
                faces.add((axis, 1))
    assert faces == {(axis, side) for axis in range(3) for side in (0, 1)}


def test_nodules_are_brighter_than_their_surroundings_on_average(phantom_cache):
    cache = CropCache(phantom_cache)
    core = [cache.crop(k)[14:18, 22:26, 22:26].mean() for k in range(len(cache))]
    labels = cache.labels.astype(bool)
    assert np.mean(np.array(core)[labels]) > np.mean(np.array(core)[~labels]) + 200


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.phantom",
            "luna16",
            str(out),
            "--series",
            "2",
            "--seed",
            "4",
            "--shape_irc",
            "40",
            "64",
            "64",
        ],
        check=True,
    )
    assert len(find_scans(out)) == 2
    build_cache(Luna16Candidates(out), tmp_path / "cache", SETTINGS)


def test_the_luna16_geometry_has_luna16s_spacings_nodule_sizes_and_pleural_blobs(tmp_path):
    from luna.luna16.phantom import SLICE_SPACINGS_MM

    spec = PhantomSpec(series=16, seed=5, subsets=2, geometry="luna16", field_of_view_mm=(60.0, 80.0, 80.0))
    folder = generate_phantom(tmp_path / "luna16", spec)
    geometries = [Geometry.read(path) for path in find_scans(folder).values()]
    in_plane = np.array([g.spacing_xyz[0] for g in geometries])
    slices = np.array([g.spacing_xyz[2] for g in geometries])
    assert ((in_plane >= 0.46) & (in_plane <= 0.98)).all() and in_plane.std() > 0.02
    assert set(slices.round(4)) <= set(SLICE_SPACINGS_MM) and len(set(slices)) >= 3
    for g in geometries:  # the same field of view in millimetres, whatever the spacing
        extent = np.array(g.shape_irc) * g.spacing_xyz[::-1]
        assert np.allclose(extent, spec.field_of_view_mm, atol=g.spacing_xyz.max())
    diameters = [float(r["diameter_mm"]) for r in csv.DictReader(open(folder / "annotations.csv"))]
    on_disk = [d for d in diameters if d != 6.5]  # the missing series' nodules are written at 6.5 mm
    assert min(on_disk) >= 3.25 and max(on_disk) <= 32 and 4.5 < float(np.median(on_disk)) < 9
    scan = _make_scan(
        spec, 3, np.random.default_rng(0)
    )  # every pleural blob is a negative candidate, on a lung wall
    spacing = scan.spacing_xyz[::-1]
    extent = np.array(scan.hu.shape) * spacing
    semi = np.array([0.44, 0.28, 0.18]) * extent
    centers = [extent * np.array([0.5, 0.48, 0.5 + side * 0.21]) for side in (-1, 1)]
    on_wall = [
        point
        for point in scan.negatives_irc
        if any(abs((((point * spacing - c) / semi) ** 2).sum() - 1) < 1e-6 for c in centers)
    ]
    assert len(on_wall) >= 2  # three blobs, less any that fell within reach of a nodule
