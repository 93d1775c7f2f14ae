import filecmp
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from luna.data.cache.build import build_cache, cache_path
from luna.data.cache.read import CacheBuildError, CropCache, open_built_cache
from luna.data.volume import HU_WINDOW, ScanReadError, Volume
from luna.luna16.release import find_scans
from luna.luna16.sources import Luna16Candidates
from tests.conftest import SETTINGS
from tests.oracles import load_candidates, native_settings, reference_crop


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def candidate(cache: CropCache, k: int):
    return (
        cache.image_ids[cache.image_of[k]],
        tuple(cache.center_xyz[k].tolist()),
        bool(cache.labels[k]),
        float(cache.column("diameter_mm")[k]),
    )


def test_crops_match_the_reference_crop_and_order(phantom_dir, phantom_cache):
    cache = CropCache(phantom_cache)
    scans = find_scans(phantom_dir)
    expected = load_candidates(phantom_dir / "annotations.csv", phantom_dir / "candidates.csv", set(scans))
    assert [candidate(cache, k) for k in range(len(cache))] == [
        (c.series_uid, c.center_xyz, c.is_nodule, c.diameter_mm) for c in expected
    ]
    for k in range(0, len(cache), 17):
        series_uid, center_xyz = candidate(cache, k)[:2]
        crop, center_irc = reference_crop(Volume.read(scans[series_uid]), center_xyz)
        assert np.array_equal(cache.crop(k), crop)
        assert tuple(cache.column("center_irc")[k]) == center_irc
        assert all(0 <= o < w for o, w in zip(cache.offset_irc()[k], (32, 48, 48), strict=True))
    assert cache.crop(0).dtype == np.int16 and not cache.crop(0).flags.writeable
    assert cache.manifest["crops_per_class"][1] == sum(c.is_nodule for c in expected)


def test_storage_is_two_bytes_a_voxel(phantom_cache):
    cache = CropCache(phantom_cache)
    crop_bytes = sum(p.stat().st_size for p in (phantom_cache / "images").glob("*.npy"))
    voxels = len(cache) * 32 * 48 * 48
    assert voxels * 2 <= crop_bytes <= voxels * 2 + 128 * len(cache.image_ids)


def test_unchanged_inputs_reuse_the_cache_without_reading_scans(phantom_dir, phantom_cache, monkeypatch):
    def fail(*_):
        raise AssertionError("a scan was read")

    monkeypatch.setattr(Volume, "read", fail)
    monkeypatch.setattr(Luna16Candidates, "table", fail)
    assert build_cache(Luna16Candidates(phantom_dir), phantom_cache.parent, SETTINGS) == phantom_cache


def test_changed_inputs_build_a_new_cache(phantom_copy, phantom_cache, tmp_path):
    source = Luna16Candidates(phantom_copy)
    assert (
        build_cache(source, phantom_cache.parent, SETTINGS) == phantom_cache
    )  # same content, other folder: reused
    with (phantom_copy / "candidates.csv").open("a") as handle:
        first_row = (phantom_copy / "candidates.csv").read_text().splitlines()[1]
        handle.write(first_row + "\n")
    changed = build_cache(Luna16Candidates(phantom_copy), tmp_path / "c", SETTINGS)
    assert changed.name != phantom_cache.name
    wider = native_settings((32, 64, 64), HU_WINDOW)
    assert cache_path(tmp_path, source, wider) != cache_path(tmp_path, source, SETTINGS)


def test_parallel_build_is_byte_identical_to_serial(phantom_dir, phantom_cache, tmp_path):
    parallel = build_cache(Luna16Candidates(phantom_dir), tmp_path, SETTINGS, processes=2)
    assert tree_bytes(parallel) == tree_bytes(phantom_cache)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from luna.data.cache import build as cache_build
    from luna.luna16.sources import Luna16Candidates
    from tests.conftest import SETTINGS
    calls = 0
    real_replace = os.replace
    def replace_then_die(src, dst):
        global calls
        calls += 1
        if calls == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written, not yet renamed
        real_replace(src, dst)
    os.replace = replace_then_die  # every atomic write renames through it (luna.io.files)
    cache_build.build_cache(Luna16Candidates(sys.argv[1]), sys.argv[2], SETTINGS)
    """
)


@pytest.mark.parametrize("kill_at_rename", [1, 4, 9, 24, 25, 34])
def test_killed_build_resumes_to_identical_bytes(phantom_dir, phantom_cache, tmp_path, kill_at_rename):
    """Kill the builder at its Nth atomic rename (12 images x 2 files, 9 columns, then the manifest)."""
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(phantom_dir), str(tmp_path), str(kill_at_rename)],
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == -9
    partial = tmp_path / phantom_cache.name
    assert not (partial / "manifest.json").exists()
    assert list(partial.rglob(".*.tmp")), "the kill must leave a temporary file behind"
    resumed = build_cache(Luna16Candidates(phantom_dir), tmp_path, SETTINGS)
    assert tree_bytes(resumed) == tree_bytes(phantom_cache)
    assert filecmp.dircmp(resumed, phantom_cache).diff_files == []


def test_series_not_on_disk_give_one_summary_warning_or_a_note_for_the_phantom(
    phantom_copy, tmp_path, caplog
):
    with caplog.at_level(logging.INFO):
        build_cache(Luna16Candidates(phantom_copy), tmp_path / "phantom", SETTINGS)
    notes = [r for r in caplog.records if "not on disk" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in notes] == [
        (logging.INFO, "4 rows of 2 images not on disk (on purpose, as in a partial download): skipped")
    ]
    caplog.clear()
    (phantom_copy / "phantom.json").unlink()  # the same files, as a user's partial download
    with caplog.at_level(logging.WARNING):
        build_cache(Luna16Candidates(phantom_copy), tmp_path / "download", SETTINGS)
    summary = [r.getMessage() for r in caplog.records if "no volume on disk" in r.getMessage()]
    assert len(summary) == 1 and summary[0].startswith("4 rows of 2 images have no volume on disk")


def test_candidate_outside_its_scan_is_skipped_with_a_warning(phantom_copy, tmp_path, caplog):
    uid = sorted(find_scans(phantom_copy))[0]
    with (phantom_copy / "candidates.csv").open("a") as handle:
        handle.write(f"{uid},5000.0,5000.0,5000.0,0\n")
    with caplog.at_level(logging.WARNING):
        path = build_cache(Luna16Candidates(phantom_copy), tmp_path, SETTINGS)
    assert any(
        "1 rows lie outside their volume" in r.getMessage()
        and uid in r.getMessage()
        and "(5000.0, 5000.0, 5000.0)" in r.getMessage()
        for r in caplog.records
    )
    cache = CropCache(path)
    assert not (np.asarray(cache.center_xyz) == 5000.0).all(axis=1).any()


def test_bad_scan_fails_naming_it_or_is_skipped_on_request(phantom_copy, tmp_path, caplog):
    source = Luna16Candidates(phantom_copy)
    scans = find_scans(phantom_copy)
    uid = [uid for uid in source.table().image_ids if uid in scans][
        -1
    ]  # cut last: the others' crops stay to resume
    raw = scans[uid].with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:4096])
    source = Luna16Candidates(phantom_copy)
    with pytest.raises(ScanReadError, match=uid):
        build_cache(source, tmp_path / "strict", SETTINGS, processes=2)
    with pytest.raises(CacheBuildError, match=f"failed in another process: ScanReadError: .*{uid}"):
        open_built_cache(cache_path(tmp_path / "strict", source, SETTINGS))
    with caplog.at_level(logging.WARNING):
        lenient = CropCache(build_cache(source, tmp_path / "lenient", SETTINGS, skip_bad_scans=True))
    assert lenient.manifest["skipped_images"] == [uid]
    assert any(f"skipped image {uid}" in r.getMessage() for r in caplog.records)
    assert uid not in {lenient.image_ids[k] for k in np.unique(lenient.image_of)}


def test_nothing_left_after_filtering_is_a_clear_error(phantom_copy, tmp_path):
    lines = (phantom_copy / "candidates.csv").read_text().splitlines()
    (phantom_copy / "candidates.csv").write_text(lines[0] + "\n" + "9.9.9,1.0,2.0,3.0,0\n")
    with pytest.raises(CacheBuildError, match="no row left to serve"):
        build_cache(Luna16Candidates(phantom_copy), tmp_path, SETTINGS)
    assert not list(tmp_path.glob("luna-*"))  # no crop was cut: no folder left behind for nobody to reuse


def test_unwritable_cache_folder_fails_before_any_work(phantom_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(Luna16Candidates, "table", lambda self: pytest.fail("work started"))
    with pytest.raises(CacheBuildError, match=f"cache folder {blocker / 'cache'} is not writable"):
        build_cache(Luna16Candidates(phantom_dir), blocker / "cache", SETTINGS)


def test_missing_inputs_say_what_was_expected_where(phantom_copy, tmp_path):
    (phantom_copy / "annotations.csv").unlink()
    with pytest.raises(FileNotFoundError, match=f"{phantom_copy / 'annotations.csv'}"):
        build_cache(Luna16Candidates(phantom_copy), tmp_path, SETTINGS)
    with pytest.raises(FileNotFoundError, match=r"no scans found: expected .*subset\*/<seriesuid>\.mhd"):
        build_cache(Luna16Candidates(phantom_copy / "seg-lungs-LUNA16"), tmp_path, SETTINGS)


def test_cache_pickles_without_its_columns_or_memory_maps(phantom_cache):
    cache = CropCache(phantom_cache)
    cache.crop(0)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._maps == {} and clone._columns == {} and np.array_equal(clone.crop(3), cache.crop(3))
    assert len(pickle.dumps(cache)) < 20_000  # the manifest, not a byte per crop


def test_a_scan_rewritten_in_place_or_a_moved_origin_gives_a_new_cache(phantom_copy, phantom_cache):
    source = Luna16Candidates(phantom_copy)
    assert cache_path(phantom_cache.parent, source, SETTINGS) == phantom_cache
    raw = sorted(phantom_copy.glob("subset*/*.raw"))[0]
    stat = raw.stat()
    raw.write_bytes(raw.read_bytes())  # same size, same bytes, but rewritten: it could hold other voxels
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache_path(phantom_cache.parent, source, SETTINGS) != phantom_cache
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_path(phantom_cache.parent, source, SETTINGS) == phantom_cache
    header = raw.with_suffix(".mhd")
    text = header.read_text()
    origin = next(line for line in text.splitlines() if line.startswith("Offset"))
    moved = "Offset = " + " ".join(str(float(v) + 20) for v in origin.split("=")[1].split())
    header.write_text(text.replace(origin, moved))  # the header's geometry is part of the key
    assert cache_path(phantom_cache.parent, source, SETTINGS) != phantom_cache
