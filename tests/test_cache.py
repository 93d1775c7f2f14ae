import filecmp
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from luna.data import cache as cache_module
from luna.data.cache import CacheBuildError, CacheInputs, CropCache, build_cache, open_built_cache
from luna.data.candidates import load_candidates
from luna.data.ct import CtScan, ScanReadError, find_scans


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_crops_match_the_reference_crop_and_order(phantom_dir, phantom_cache):
    cache = CropCache(phantom_cache)
    scans = find_scans(phantom_dir)
    expected = load_candidates(phantom_dir / "annotations.csv", phantom_dir / "candidates.csv", set(scans))
    assert [cache.candidate(k) for k in range(len(cache))] == expected
    for k in range(0, len(cache), 17):
        candidate = cache.candidate(k)
        crop, center_irc = CtScan.read(scans[candidate.series_uid]).crop(candidate.center_xyz)
        assert np.array_equal(cache.crop(k), crop)
        assert tuple(cache.index[k]["center_irc"]) == center_irc
        offset = cache.index[k]["offset_irc"]
        assert all(0 <= o < w for o, w in zip(offset, (32, 48, 48)))
    assert cache.crop(0).dtype == np.int16 and not cache.crop(0).flags.writeable
    assert cache.manifest["positives"] == sum(c.is_nodule for c in expected)


def test_storage_is_two_bytes_a_voxel(phantom_cache):
    cache = CropCache(phantom_cache)
    crop_bytes = sum(p.stat().st_size for p in (phantom_cache / "scans").glob("*.npy"))
    voxels = len(cache) * 32 * 48 * 48
    assert voxels * 2 <= crop_bytes <= voxels * 2 + 128 * len(cache.series_uids)


def test_unchanged_inputs_reuse_the_cache_without_reading_scans(phantom_dir, phantom_cache, monkeypatch):
    def fail(*_):
        raise AssertionError("a scan was read")

    monkeypatch.setattr(CtScan, "read", fail)
    assert build_cache(CacheInputs.from_folder(phantom_dir), phantom_cache.parent) == phantom_cache


def test_changed_inputs_build_a_new_cache(phantom_copy, phantom_cache, tmp_path):
    inputs = CacheInputs.from_folder(phantom_copy)
    assert build_cache(inputs, phantom_cache.parent) == phantom_cache  # same content, other folder: reused
    with (phantom_copy / "candidates.csv").open("a") as handle:
        first_row = (phantom_copy / "candidates.csv").read_text().splitlines()[1]
        handle.write(first_row + "\n")
    changed = build_cache(CacheInputs.from_folder(phantom_copy), tmp_path / "c")
    assert changed.name != phantom_cache.name
    wider = CacheInputs.from_folder(phantom_copy, width_irc=(32, 64, 64))
    assert wider.key() != inputs.key()


def test_parallel_build_is_byte_identical_to_serial(phantom_dir, phantom_cache, tmp_path):
    parallel = build_cache(CacheInputs.from_folder(phantom_dir), tmp_path, processes=2)
    assert tree_bytes(parallel) == tree_bytes(phantom_cache)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from luna.data import cache
    calls = 0
    real_replace = os.replace
    def replace_then_die(src, dst):
        global calls
        calls += 1
        if calls == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written, not yet renamed
        real_replace(src, dst)
    cache.os.replace = replace_then_die
    cache.build_cache(cache.CacheInputs.from_folder(sys.argv[1]), sys.argv[2])
    """
)


@pytest.mark.parametrize("kill_at_rename", [1, 4, 9, 24, 25])
def test_killed_build_resumes_to_identical_bytes(phantom_dir, phantom_cache, tmp_path, kill_at_rename):
    """Kill the builder at its Nth atomic rename (12 scans x 2 files, then the index, then the manifest)."""
    result = subprocess.run([sys.executable, "-c", KILLER, str(phantom_dir), str(tmp_path), str(kill_at_rename)])
    assert result.returncode == -9
    partial = tmp_path / phantom_cache.name
    assert not (partial / "manifest.json").exists()
    assert list(partial.rglob(".*.tmp")), "the kill must leave a temporary file behind"
    resumed = build_cache(CacheInputs.from_folder(phantom_dir), tmp_path)
    assert tree_bytes(resumed) == tree_bytes(phantom_cache)
    assert filecmp.dircmp(resumed, phantom_cache).diff_files == []


def test_series_not_on_disk_give_one_summary_warning(phantom_dir, phantom_cache, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        build_cache(CacheInputs.from_folder(phantom_dir), tmp_path)
    summary = [r.getMessage() for r in caplog.records if "have no scan" in r.getMessage()]
    assert summary == [f"4 candidate rows of 2 series in candidates.csv have no scan under {phantom_dir}: skipped"]


def test_candidate_outside_its_scan_is_skipped_with_a_warning(phantom_copy, tmp_path, caplog):
    uid = sorted(find_scans(phantom_copy))[0]
    with (phantom_copy / "candidates.csv").open("a") as handle:
        handle.write(f"{uid},5000.0,5000.0,5000.0,0\n")
    with caplog.at_level(logging.WARNING):
        path = build_cache(CacheInputs.from_folder(phantom_copy), tmp_path)
    assert any(uid in r.getMessage() and "(5000.0, 5000.0, 5000.0)" in r.getMessage() and "outside" in r.getMessage()
               for r in caplog.records)
    assert all(c.center_xyz != (5000.0, 5000.0, 5000.0) for c in map(CropCache(path).candidate, range(5)))


def test_bad_scan_fails_naming_it_or_is_skipped_on_request(phantom_copy, tmp_path, caplog):
    uid, path = sorted(find_scans(phantom_copy).items())[0]
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:4096])
    inputs = CacheInputs.from_folder(phantom_copy)
    with pytest.raises(ScanReadError, match=uid):
        build_cache(inputs, tmp_path / "strict", processes=2)
    with pytest.raises(CacheBuildError, match=f"failed in another process: ScanReadError: .*{uid}"):
        open_built_cache(tmp_path / "strict", inputs)
    with caplog.at_level(logging.WARNING):
        lenient = CropCache(build_cache(inputs, tmp_path / "lenient", skip_bad_scans=True))
    assert lenient.manifest["skipped_scans"] == [uid]
    assert any(f"skipped scan {uid}" in r.getMessage() for r in caplog.records)
    assert all(lenient.candidate(k).series_uid != uid for k in range(len(lenient)))


def test_nothing_left_after_filtering_is_a_clear_error(phantom_copy, tmp_path):
    lines = (phantom_copy / "candidates.csv").read_text().splitlines()
    (phantom_copy / "candidates.csv").write_text(lines[0] + "\n" + "9.9.9,1.0,2.0,3.0,0\n")
    with pytest.raises(CacheBuildError, match="no candidate left to serve"):
        build_cache(CacheInputs.from_folder(phantom_copy), tmp_path)


def test_unwritable_cache_folder_fails_before_any_work(phantom_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(cache_module, "load_candidates", lambda *a: pytest.fail("work started"))
    with pytest.raises(CacheBuildError, match=f"cache folder {blocker / 'cache'} is not writable"):
        build_cache(CacheInputs.from_folder(phantom_dir), blocker / "cache")


def test_missing_inputs_say_what_was_expected_where(phantom_copy):
    (phantom_copy / "annotations.csv").unlink()
    with pytest.raises(FileNotFoundError, match=f"{phantom_copy / 'annotations.csv'}"):
        CacheInputs.from_folder(phantom_copy)
    with pytest.raises(FileNotFoundError, match=r"no scans found: expected .*subset\*/<seriesuid>\.mhd"):
        CacheInputs.from_folder(phantom_copy / "seg-lungs-LUNA16")


def test_cache_pickles_without_its_memory_maps(phantom_cache):
    import pickle

    cache = CropCache(phantom_cache)
    cache.crop(0)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._maps == {} and np.array_equal(clone.crop(3), cache.crop(3))
    assert len(pickle.dumps(cache)) < os.path.getsize(phantom_cache / "index.npy") + 10_000


def test_a_scan_rewritten_in_place_gives_a_new_cache(phantom_copy, phantom_cache):
    raw = sorted(phantom_copy.glob("subset*/*.raw"))[0]
    stat = raw.stat()
    raw.write_bytes(raw.read_bytes())  # same size, same bytes, but rewritten: it could hold other voxels
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert f"luna-{CacheInputs.from_folder(phantom_copy).key()}" != phantom_cache.name
