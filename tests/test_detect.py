"""``python -m luna.detect``: from scans to findings with a segmentation and a classifier, on a LUNA16
folder without any CSV and on single volume files; bad inputs in one line, damaged scans named."""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from luna.cli.detect import cli, main
from luna.detection.networks import load_trained, stage_of
from luna.detection.pipeline import Detector
from tests.helpers import last_error_line, run_cli

CPU = torch.device("cpu")
COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


@pytest.fixture(scope="module")
def checkpoints(segmentation_run, classifier_run):
    _, run, _ = segmentation_run
    return run / "checkpoints" / "last.ckpt", classifier_run[1]


@pytest.fixture(scope="module")
def bare_scans(phantom_dir, tmp_path_factory) -> Path:
    """The phantom's scans alone: subset*/ and nothing else (no CSV)."""
    folder = tmp_path_factory.mktemp("bare") / "scans"
    for subset in phantom_dir.glob("subset*"):
        shutil.copytree(subset, folder / subset.name)
    return folder


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_a_folder_of_scans_without_any_csv_is_detected(checkpoints, bare_scans, tmp_path, caplog):
    segmentation, classifier = checkpoints
    assert (
        main(
            [
                "--data_dir",
                str(bare_scans),
                "--segmentation",
                str(segmentation),
                "--classifier",
                str(classifier),
                "--output",
                str(tmp_path / "out"),
                "--threshold",
                "0.3",
                "--max_candidates",
                "6",
            ]
        )
        == 0
    )
    rows = rows_of(tmp_path / "out" / "detections.csv")
    record = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert list(rows[0]) == COLUMNS if rows else True
    assert record["rows"] == len(rows) and sorted(record["images"]) == sorted(
        p.stem for p in bare_scans.rglob("*.mhd")
    )
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)
    # the barely trained segmentation finds thousands at 0.3: each scan is bounded, and says so
    assert max(Counter(row["seriesuid"] for row in rows).values()) == 6
    assert "candidates at threshold 0.3; classifying the 6 it is surest of" in caplog.text
    assert record["segmentation"] == str(segmentation.resolve()) and record["data_dir"] == str(
        bare_scans.resolve()
    )


def test_the_findings_are_the_segmentations_candidates_sorted_by_the_classifier(checkpoints, phantom_dir):
    segmentation, classifier = checkpoints
    detector = Detector(
        stage_of(load_trained(segmentation, "segmentation", "--segmentation"), CPU),
        stage_of(load_trained(classifier, "classification", "--classifier"), CPU),
        threshold=0.3,
        max_candidates=6,
    )
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    findings, seconds = detector.detect(scan)
    assert seconds > 0 and findings.center_xyz.shape == (len(findings), 3)
    if len(findings):  # the same candidates crop by crop: the classifier's probability of each
        from luna.data.volume import Volume
        from luna.detection.pipeline import classify

        volume = Volume.read(scan, window=None)
        again = classify(volume, findings.center_xyz[:1], detector.classifier, CPU)[:, 1]
        assert again[0] == pytest.approx(findings.probability[0], abs=1e-6)


def test_a_single_nifti_file_is_detected(checkpoints, phantom_dir, tmp_path):
    segmentation, classifier = checkpoints
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[1]
    nifti = tmp_path / "patient.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(scan)), str(nifti))
    assert (
        main(
            [
                "--scans",
                str(nifti),
                "--segmentation",
                str(segmentation),
                "--classifier",
                str(classifier),
                "--output",
                str(tmp_path / "out"),
                "--max_candidates",
                "6",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert record["images"] == ["patient"] and record["data_dir"] is None
    assert all(row["seriesuid"] == "patient" for row in rows_of(tmp_path / "out" / "detections.csv"))


def test_a_checkpoint_of_the_wrong_kind_is_one_line(checkpoints, bare_scans, tmp_path, capsys, monkeypatch):
    segmentation, classifier = checkpoints
    code, stderr = run_cli(
        [
            "--data_dir",
            str(bare_scans),
            "--segmentation",
            str(classifier),
            "--classifier",
            str(classifier),
            "--output",
            str(tmp_path),
        ],
        capsys,
        monkeypatch,
        cli,
    )
    assert code == 2 and "Traceback" not in stderr
    assert (
        last_error_line(stderr)
        == f"error: --segmentation: {classifier} is a classification checkpoint, not a "
        "segmentation one"
    )


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_a_damaged_scan_is_named_and_the_others_are_detected(checkpoints, bare_scans, tmp_path, caplog):
    segmentation, classifier = checkpoints
    folder = tmp_path / "scans"
    shutil.copytree(bare_scans, folder)
    damaged = sorted(folder.rglob("*.raw"))[0]
    damaged.write_bytes(damaged.read_bytes()[:5000])
    assert (
        main(
            [
                "--data_dir",
                str(folder),
                "--segmentation",
                str(segmentation),
                "--classifier",
                str(classifier),
                "--output",
                str(tmp_path / "out"),
                "--max_candidates",
                "6",
            ]
        )
        == 1
    )
    record = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert list(record["failed"]) == [damaged.stem] and damaged.stem in caplog.text
    assert len(record["images"]) == len(list(folder.rglob("*.mhd"))) - 1


def test_crops_a_scan_cannot_give_name_the_scan_and_the_classifier(
    checkpoints, phantom_dir, tmp_path, caplog
):
    segmentation, classifier = checkpoints
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    small = tmp_path / "small.nii.gz"  # 20 slices: a native crop of 32 slices cannot be cut from it
    image = sitk.ReadImage(str(scan))
    sitk.WriteImage(image[:, :, 22:42], str(small))
    detector = Detector(
        stage_of(load_trained(segmentation, "segmentation", "--segmentation"), CPU),
        stage_of(load_trained(classifier, "classification", "--classifier"), CPU),
        threshold=0.0,
        max_candidates=6,
    )
    from luna.detection.pipeline import CropSettingsError

    with pytest.raises(
        CropSettingsError,
        match=rf"scan small .*the classifier {classifier} takes crops of 32x48x48 "
        r"native voxels",
    ):
        detector.detect(small)


def test_no_candidate_is_no_row_and_a_line_says_so(checkpoints, phantom_dir, tmp_path, caplog):
    import logging

    segmentation, classifier = checkpoints
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    empty = tmp_path / "air.nii.gz"
    air = sitk.ReadImage(str(scan)) * 0 - 1000  # nothing but air
    sitk.WriteImage(air, str(empty))
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "--scans",
                    str(empty),
                    "--segmentation",
                    str(segmentation),
                    "--classifier",
                    str(classifier),
                    "--output",
                    str(tmp_path / "out"),
                    "--threshold",
                    "0.999",
                ]
            )
            == 0
        )
    assert rows_of(tmp_path / "out" / "detections.csv") == []
    assert "air: the segmentation found nothing: no row" in caplog.text
    assert np.isfinite(
        json.loads((tmp_path / "out" / "detections.json").read_text())["seconds_per_scan"]
    ).all()
