"""The segmentation stage: masks from annotations, the volume store, candidates grouped from a
segmentation, and the segmentation trained, validated and predicted through ``luna.fit``."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from luna.data.cache.read import CacheBuildError
from luna.data.volume import Geometry
from luna.luna16.segmentation import Luna16Nodules
from luna.segmentation.candidates import Candidates, group_components, nodules_hit
from luna.segmentation.masks import ball_mask
from luna.segmentation.store import VolumeSettings, VolumeStore, build_store, load_volume
from tests.helpers import last_error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]
ROTATED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
FLIPPED = np.diag([-1.0, -1.0, 1.0])


# ------------------------------------------------------------------ masks


@pytest.mark.parametrize(
    "spacing_xyz, direction",
    [
        ((1.0, 1.0, 1.0), np.eye(3)),
        ((0.7, 0.7, 2.5), np.eye(3)),
        ((0.6, 0.9, 1.25), ROTATED),
        ((0.8, 0.8, 2.0), FLIPPED),
    ],
)
def test_a_nodule_mask_is_a_ball_of_its_diameter_in_millimetres_whatever_the_grid(spacing_xyz, direction):
    spacing = np.array(spacing_xyz)
    geometry = Geometry((40, 80, 80), np.array([-30.0, 25.0, -100.0]), spacing, direction)
    center_cri = np.array([37.3, 41.6, 19.2])
    center = direction @ (center_cri * spacing) + geometry.origin_xyz
    mask = ball_mask(geometry, center[None], np.array([12.0]), threshold=None)
    volume = mask.sum() * spacing.prod()
    assert volume == pytest.approx(4 / 3 * math.pi * 6.0**3, rel=0.12)  # the ball's millimetres, sampled
    found = group_components(mask.astype(np.float32), geometry)
    assert len(found) == 1 and np.linalg.norm(found.center_xyz[0] - center) < 0.5 * spacing.max()
    assert found.diameter_mm[0] == pytest.approx(12.0, rel=0.05)


def test_the_threshold_keeps_the_dense_voxels_of_the_ball_and_a_tiny_nodule_its_centre():
    geometry = Geometry((30, 30, 30), np.zeros(3), np.ones(3), np.eye(3))
    values = np.full((30, 30, 30), -850.0)
    values[10:20, 10:20, 10:15] = 40.0  # the nodule's tissue fills half of its ball
    mask = ball_mask(geometry, np.array([[14.5, 14.5, 14.5]]), np.array([12.0]), values, threshold=-700.0)
    assert mask.any() and (values[mask > 0] > -700).all()
    tiny = ball_mask(geometry, np.array([[3.0, 3.0, 3.0]]), np.array([0.5]), values, threshold=-700.0)
    assert tiny.sum() == 1 and tiny[3, 3, 3] == 1  # no voxel above the threshold: the centre voxel stays


# ------------------------------------------------------------------ candidates


def test_candidates_are_the_components_with_their_weighted_centres_in_millimetres():
    geometry = Geometry((20, 30, 30), np.array([10.0, -5.0, 3.0]), np.array([0.5, 0.5, 2.0]), ROTATED)
    probability = np.zeros((20, 30, 30), dtype=np.float32)
    probability[4:7, 5:8, 5:8] = 0.9  # a 27-voxel blob
    probability[4:7, 5:8, 8] = 0.6  # its edge, less probable: pulls the centre a little
    probability[15, 20, 20] = 0.8  # one voxel
    probability[10, 25, 2] = 0.4  # under the threshold
    found = group_components(probability, geometry, threshold=0.5)
    assert len(found) == 2
    weights = probability * (probability > 0.5)
    first = weights.copy()
    first[15] = 0
    i, r, c = np.nonzero(first)
    cri = np.stack([c, r, i], 1) * geometry.spacing_xyz
    expected = ((cri @ ROTATED.T + geometry.origin_xyz) * first[i, r, c, None]).sum(0) / first.sum()
    centers = {tuple(np.round(center, 6)) for center in found.center_xyz}
    assert tuple(np.round(expected, 6)) in centers
    assert sorted(found.probability.tolist()) == pytest.approx([0.8, 0.9])
    assert sorted(found.volume_mm3.tolist()) == pytest.approx([0.5, 36 * 0.5])
    assert len(group_components(probability, geometry, threshold=0.5, min_volume_mm3=1.0)) == 1
    assert (
        len(group_components(np.zeros((4, 4, 4)), Geometry((4, 4, 4), np.zeros(3), np.ones(3), np.eye(3))))
        == 0
    )


def test_the_most_probable_candidates_are_kept_in_their_order_the_larger_first_among_equals():
    candidates = Candidates(
        np.arange(15, dtype=float).reshape(5, 3),
        np.array([0.5, 0.9, 0.7, 0.9, 0.6]),
        np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
    )
    kept = candidates.most_probable(3)
    assert kept.probability.tolist() == [0.9, 0.7, 0.9] and kept.volume_mm3.tolist() == [2.0, 3.0, 4.0]
    assert candidates.most_probable(2).volume_mm3.tolist() == [2.0, 4.0]
    assert candidates.most_probable(9) is candidates


def test_a_nodule_is_hit_by_a_candidate_strictly_inside_its_radius():
    findings = np.array([[0.0, 0.0, 0.0, 10.0], [50.0, 0.0, 0.0, -1.0]])
    assert nodules_hit(np.array([[4.9, 0.0, 0.0]]), findings).tolist() == [True, False]
    assert nodules_hit(np.array([[5.0, 0.0, 0.0], [54.9, 0, 0]]), findings).tolist() == [
        False,
        True,
    ]  # -1: 10 mm
    assert nodules_hit(np.empty((0, 3)), findings).tolist() == [False, False]


# ------------------------------------------------------------------ the volume store


@pytest.fixture(scope="module")
def store(phantom_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    return build_store(Luna16Nodules(phantom_dir), folder, VolumeSettings((1.5, 1.5, 1.5)), processes=2)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_store_holds_each_scan_resampled_with_its_nodules_masks(store, phantom_dir):
    opened = VolumeStore(store)
    scans = sorted(phantom_dir.glob("subset*/*.mhd"))
    assert sorted(opened.image_ids) == sorted(path.stem for path in scans)
    k = next(k for k in range(len(opened)) if len(opened.findings(k)))
    geometry = opened.geometry(k)
    assert np.allclose(geometry.spacing_xyz, 1.5) and opened.image(k).dtype == np.int16
    values, grid = load_volume(
        next(p for p in scans if p.stem == opened.image_ids[k]), VolumeSettings((1.5, 1.5, 1.5))
    )
    assert (
        np.array_equal(values, opened.image(k)) and grid.shape_irc == geometry.shape_irc
    )  # one preprocessing
    irc, inside = geometry.inside(opened.findings(k)[:, :3])
    assert all(opened.mask(k)[tuple(point)] for point in irc[inside])  # every nodule's centre is in its mask
    again = build_store(Luna16Nodules(phantom_dir), store.parent, VolumeSettings((1.5, 1.5, 1.5)))
    assert again == store  # complete: reused as it is


def test_a_damaged_stored_volume_is_named_never_served(store, tmp_path):
    copy = tmp_path / store.name
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    npy = sorted((copy / "images").glob("*.image.npy"))[0]
    data = bytearray(npy.read_bytes())
    data[-100] ^= 0xFF
    npy.write_bytes(bytes(data))
    opened = VolumeStore(copy)
    k = opened.files.index(npy.name.removesuffix(".image.npy"))
    with pytest.raises(
        CacheBuildError, match=rf"the stored image of volume {opened.image_ids[k]} .* is damaged"
    ):
        opened.image(k)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from luna.luna16.segmentation import Luna16Nodules
    from luna.segmentation.store import VolumeSettings, build_store
    calls, real_replace = 0, os.replace
    def replace_then_die(src, dst):
        global calls
        calls += 1
        if calls == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # a file written under its temporary name, not renamed
        real_replace(src, dst)
    os.replace = replace_then_die
    build_store(Luna16Nodules(sys.argv[1]), sys.argv[2], VolumeSettings((1.5, 1.5, 1.5)))
""")


@pytest.mark.parametrize("kill_at_rename", [2, 7])
def test_a_killed_store_build_resumes_to_identical_bytes(phantom_dir, store, tmp_path, kill_at_rename):
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(phantom_dir), str(tmp_path), str(kill_at_rename)],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    resumed = build_store(Luna16Nodules(phantom_dir), tmp_path, VolumeSettings((1.5, 1.5, 1.5)))
    assert not list(tmp_path.rglob("*.tmp"))
    assert tree_bytes(resumed) == tree_bytes(store)


def test_mask_files_are_resampled_onto_the_image_and_their_components_are_the_findings(points_dir, tmp_path):
    from luna.points.pairs import MaskPairsCsv

    path = build_store(MaskPairsCsv(points_dir / "pairs.csv"), tmp_path, VolumeSettings((1.0, 1.0, 1.0)))
    opened = VolumeStore(path)
    with open(points_dir / "points.csv", newline="") as handle:
        points = list(csv.DictReader(handle))
    for k, image_id in enumerate(opened.image_ids):
        marked = np.array(
            [[float(p[c]) for c in ("coordX", "coordY", "coordZ")] for p in points if p["image"] == image_id]
        )
        findings = opened.findings(k)
        assert len(findings) == len(marked)  # one component per finding of the phantom
        assert nodules_hit(marked, findings).all()  # each marked point lies in a component


# ------------------------------------------------------------------ bad inputs


def test_a_pairs_csv_naming_a_missing_mask_names_its_line(points_dir, tmp_path):
    from luna.io.csvfile import CsvFormatError
    from luna.points.pairs import MaskPairsCsv

    bad = tmp_path / "pairs.csv"
    bad.write_text(f"image,mask\n{points_dir / 'images' / 'case000.nii.gz'},{tmp_path / 'nope.nii.gz'}\n")
    with pytest.raises(
        CsvFormatError, match=r"pairs\.csv, line 2, column mask: .*nope\.nii\.gz does not exist"
    ):
        MaskPairsCsv(bad).table()


# ------------------------------------------------------------------ trained through luna.fit


def test_the_segmentation_trains_and_validates_through_luna_fit(segmentation_run):
    config, run, cli = segmentation_run
    metrics = cli.trainer.callback_metrics
    assert {"val/dice", "val/nodule_recall", "val/candidates_per_scan", "train/loss_epoch"} <= set(metrics)
    assert 0 <= float(metrics["val/nodule_recall"]) <= 1
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["luna_task"] == "segmentation"
    assert checkpoint["hyper_parameters"]["input_spacings_mm"] == [[1.5, 1.5, 1.5]]
    assert (run / "figures" / "val_segmentation-epoch000.png").is_file()


def test_predict_writes_the_candidates_of_each_scan_and_evaluate_scores_them(segmentation_run, tmp_path):
    from luna.cli.evaluate import main as evaluate
    from luna.cli.fit import main

    config, run, _ = segmentation_run
    out = tmp_path / "candidates.csv"
    main(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            f"--predictions.path={out}",
        ]
    )
    record = json.loads(out.with_suffix(".json").read_text())
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert record["rows"] == len(rows) and record["images"]  # every predicted scan, with rows or without
    assert evaluate([str(out), "--bootstrap", "0"]) == 0


def test_a_classifier_checkpoint_given_to_the_segmentation_is_one_line(
    segmentation_run, phantom_dir, tmp_path, capsys, monkeypatch
):
    from luna.cli.fit import main
    from tests.helpers import tiny_config

    config, _, _ = segmentation_run
    classifier = tiny_config(tmp_path / "tiny.yaml", phantom_dir, tmp_path / "cache", tmp_path / "runs")
    main(["--config", str(classifier)])
    code, stderr = run_cli(
        [
            "validate",
            "--config",
            str(config),
            f"--ckpt_path={tmp_path / 'runs/version_0/checkpoints/last.ckpt'}",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "is a classification checkpoint, not a segmentation one" in last_error_line(stderr)


def test_the_shipped_segmentation_config_trains_and_validates_a_batch(phantom_dir, tmp_path):
    """configs/luna16_segment.yaml as the README runs it, on the test phantom, one batch each way."""
    from luna.cli.fit import main

    cli = main(
        [
            "--config",
            str(ROOT / "configs" / "luna16_segment.yaml"),
            f"--data.data_dir={phantom_dir}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--data.batch_size=1",
            "--data.num_workers=0",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
        ]
    )
    assert type(cli.model).__name__ == "SegmentationModule" and cli.model.hparams.loss == "dice_bce"
    assert cli.datamodule.store is not None and "val/nodule_recall" in cli.trainer.callback_metrics


def test_the_pairs_config_trains_on_volumes_and_masks(points_dir, tmp_path):
    from luna.cli.fit import main

    cli = main(
        [
            "--config",
            str(ROOT / "configs" / "segment_pairs.yaml"),
            f"--data.pairs_csv={points_dir / 'pairs.csv'}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--data.samples_per_epoch=4",
            "--data.batch_size=2",
            "--data.patch_irc=[16, 32, 32]",
            "--data.num_workers=0",
            "--data.val_stride=3",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            "--loggers=[csv]",
        ]
    )
    assert 0 <= float(cli.trainer.callback_metrics["val/nodule_recall"]) <= 1


@pytest.mark.e2e
def test_ddp_nodule_recall_equals_one_process(segmentation_run, tmp_path):
    config, run, _ = segmentation_run
    checkpoint = tmp_path / "segmentation.ckpt"  # outside its run: validate writes under default_root_dir
    shutil.copy(run / "checkpoints" / "last.ckpt", checkpoint)
    results = {}
    for devices in (1, 2):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "luna.fit",
                "validate",
                "--config",
                str(config),
                f"--ckpt_path={checkpoint}",
                "--trainer.accelerator=cpu",
                "--trainer.strategy=ddp",
                f"--trainer.devices={devices}",
                f"--trainer.default_root_dir={tmp_path / str(devices)}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        metrics = next((tmp_path / str(devices)).rglob("metrics.csv"))
        with metrics.open() as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("val/nodule_recall")]
        results[devices] = {
            name: float(rows[-1][name])
            for name in ("val/nodule_recall", "val/dice", "val/candidates_per_scan")
        }
    assert results[2] == pytest.approx(results[1], abs=1e-6)


def test_an_image_that_is_not_a_volume_is_named(phantom_copy, tmp_path):
    scan = sorted(phantom_copy.glob("subset*/*.raw"))[0]
    scan.write_bytes(scan.read_bytes()[:1000])
    from luna.data.volume import ScanReadError

    with pytest.raises(ScanReadError, match=rf"cannot read scan {scan.stem}"):
        build_store(Luna16Nodules(phantom_copy), tmp_path, VolumeSettings((1.5, 1.5, 1.5)))
