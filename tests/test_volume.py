import numpy as np
import pytest
import SimpleITK as sitk

from luna.data.crops import CenterOutsideScanError
from luna.data.volume import Geometry, ScanReadError, Volume, irc_to_xyz, xyz_to_irc
from luna.luna16.phantom import ROTATED_DIRECTION
from luna.luna16.release import find_scans
from tests.oracles import crop_start, reference_crop

ORIGIN = np.array([-120.0, 35.0, -300.0])
SPACING = np.array([0.7, 0.7, 2.5])


def test_xyz_to_irc_matches_simpleitk_with_a_non_identity_direction():
    image = sitk.Image(40, 30, 20, sitk.sitkInt16)  # x, y, z sizes
    image.SetOrigin(tuple(ORIGIN))
    image.SetSpacing(tuple(SPACING))
    image.SetDirection(tuple(ROTATED_DIRECTION.ravel()))
    rng = np.random.default_rng(0)
    for _ in range(50):
        cri = rng.uniform(0, [39, 29, 19])
        xyz = image.TransformContinuousIndexToPhysicalPoint(tuple(cri))
        expected_irc = tuple(int(v) for v in np.round(cri)[::-1])
        assert xyz_to_irc(xyz, ORIGIN, SPACING, ROTATED_DIRECTION) == expected_irc
        irc = tuple(int(v) for v in np.round(cri)[::-1])
        assert np.allclose(
            irc_to_xyz(irc, ORIGIN, SPACING, ROTATED_DIRECTION),
            image.TransformIndexToPhysicalPoint(tuple(reversed(irc))),
        )


def test_irc_round_trip_with_rotation():
    irc = (7, 12, 3)
    xyz = irc_to_xyz(irc, ORIGIN, SPACING, ROTATED_DIRECTION)
    assert xyz_to_irc(xyz, ORIGIN, SPACING, ROTATED_DIRECTION) == irc
    # the rotation really matters: ignoring it maps elsewhere
    assert xyz_to_irc(xyz, ORIGIN, SPACING, np.eye(3)) != irc


@pytest.mark.parametrize(
    "center, expected",
    [
        ((0, 50, 50), (0, 26, 26)),  # first slice: shifted to start 0
        ((99, 50, 50), (68, 26, 26)),  # last slice: shifted to end at the last voxel
        ((50, 1, 50), (34, 0, 26)),  # top row
        ((50, 119, 50), (34, 72, 26)),  # bottom row
        ((50, 50, 10), (34, 26, 0)),  # left column
        ((50, 50, 110), (34, 26, 72)),  # right column
        ((50, 60, 60), (34, 36, 36)),  # interior: centred, start = centre - width/2
    ],
)
def test_crop_start_shifts_inside_at_all_six_borders(center, expected):
    assert crop_start(center, (32, 48, 48), (100, 120, 120)) == expected


def test_crop_start_rejects_centres_outside_and_volumes_smaller_than_the_crop():
    with pytest.raises(CenterOutsideScanError, match="outside"):
        crop_start((100, 5, 5), (32, 48, 48), (100, 120, 120))
    with pytest.raises(CenterOutsideScanError):
        crop_start((-1, 5, 5), (32, 48, 48), (100, 120, 120))
    with pytest.raises(ValueError, match="exceeds"):
        crop_start((5, 5, 5), (32, 48, 48), (20, 120, 120))


def test_read_clips_hu_and_keeps_geometry(phantom_dir):
    scans = find_scans(phantom_dir)
    uid, path = sorted(scans.items())[0]
    scan = Volume.read(path)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert scan.name == uid and scan.voxels.dtype == np.int16 and scan.voxels.shape == raw.shape
    assert raw.min() < -1000 and scan.voxels.min() == -1000 and scan.voxels.max() <= 1000
    assert np.array_equal(scan.voxels, np.clip(raw, -1000, 1000))
    geometry = Geometry.read(path)  # the header alone gives the same geometry
    assert geometry.shape_irc == raw.shape and np.array_equal(geometry.origin_xyz, scan.origin_xyz)


def test_crop_of_rotated_scan_is_centred_on_the_candidate(phantom_dir):
    rotated = [
        path for path in find_scans(phantom_dir).values() if "TransformMatrix = 0 1 0 -1" in path.read_text()
    ]
    assert rotated, "the phantom must contain a scan with a non-identity, non-symmetric direction"
    scan = Volume.read(rotated[0])
    center_irc = (20, 70, 50)
    crop, found_irc = reference_crop(scan, scan.irc_to_xyz(center_irc))
    assert found_irc == center_irc and crop.shape == (32, 48, 48)
    assert np.array_equal(crop, scan.voxels[4:36, 46:94, 26:74])


def test_find_scans_ignores_lung_masks_and_other_folders(phantom_copy):
    (phantom_copy / "other").mkdir()
    (phantom_copy / "other" / "x.mhd").write_text("not a scan")
    scans = find_scans(phantom_copy)
    assert len(scans) == 12
    assert all(path.parent.name.startswith("subset") for path in scans.values())
    assert (phantom_copy / "seg-lungs-LUNA16").is_dir()


def test_find_scans_missing_folder_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected the LUNA16 folder .*subset\*/<seriesuid>\.mhd"):
        find_scans(tmp_path / "nowhere")


def test_missing_and_truncated_raw_name_the_scan(phantom_copy):
    paths = sorted(find_scans(phantom_copy).values())
    paths[0].with_suffix(".raw").unlink()
    with pytest.raises(ScanReadError, match=rf"{paths[0].stem}.*voxel file .*\.raw does not exist"):
        Volume.read(paths[0])
    raw = paths[1].with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(ScanReadError, match=rf"{paths[1].stem}.*holds 1,000 bytes but the header .* needs "):
        Volume.read(paths[1])
