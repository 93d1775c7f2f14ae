"""luna as a template: the generic table, a points CSV of NIfTI volumes with three classes, the
book's malignancy task, and the errors a user's own CSV meets."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from luna.cli.fit import main
from luna.io.csvfile import CsvFormatError
from luna.luna16.candidates import load_candidate_arrays
from luna.luna16.release import find_scans
from luna.luna16.sources import Luna16Candidates, Luna16Malignancy
from luna.points.source import PointsCsv
from tests.helpers import points_config, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_luna16_source_gives_the_book_ordered_candidate_table(phantom_dir):
    table = Luna16Candidates(phantom_dir).table()
    arrays = load_candidate_arrays(phantom_dir / "annotations.csv", phantom_dir / "candidates.csv")
    assert table.image_ids == arrays.series_uids == table.groups
    assert np.array_equal(table.image, arrays.series) and np.array_equal(table.center_xyz, arrays.center_xyz)
    assert np.array_equal(table.label, arrays.is_nodule) and np.array_equal(
        table.extra["diameter_mm"], arrays.diameter_mm
    )
    scans = find_scans(phantom_dir)
    folds = {uid: int(path.parent.name[6:]) for uid, path in scans.items()}
    assert table.folds.tolist() == [folds.get(uid, -1) for uid in table.image_ids]


def test_a_points_csv_of_nifti_volumes_with_three_classes_trains_validates_tests_and_predicts(
    points_dir, tmp_path
):
    config = points_config(
        tmp_path / "points.yaml", points_dir / "points.csv", tmp_path / "cache", tmp_path / "runs"
    )
    cli = main(["--config", str(config)])
    metrics = cli.trainer.callback_metrics
    for name in (
        "val/f1",
        "val/accuracy",
        "val/auroc",
        "val/recall/calcified",
        "val/recall/cavity",
        "val/recall/solid",
        "val/loss/solid",
    ):
        assert name in metrics, name
    assert "val/cpm" not in metrics and "val/loss_positive" not in metrics
    run = tmp_path / "runs" / "version_0"
    assert yaml.safe_load((run / "hparams.yaml").read_text())["class_names"] == [
        "calcified",
        "cavity",
        "solid",
    ]
    assert (run / "figures" / "val_confusion_matrix-epoch000.png").is_file()
    checkpoint = run / "checkpoints" / "last.ckpt"
    cli = main(["test", "--config", str(config), f"--ckpt_path={checkpoint}"])
    assert cli.trainer.callback_metrics["test/samples"] == len(cli.datamodule.val_dataset)
    out = tmp_path / "predictions.csv"
    main(["predict", "--config", str(config), f"--ckpt_path={checkpoint}", f"--predictions.path={out}"])
    predicted = rows_of(out)
    assert list(predicted[0]) == [
        "image",
        "coordX",
        "coordY",
        "coordZ",
        "probability_calcified",
        "probability_cavity",
        "probability_solid",
    ]  # the points CSV's own id column
    assert all(
        abs(sum(float(r[f"probability_{c}"]) for c in ("calcified", "cavity", "solid")) - 1) < 1e-5
        for r in predicted
    )
    validation_images = {r["image"] for r in predicted}
    groups = {r["group"] for r in rows_of(points_dir / "points.csv") if r["image"] in validation_images}
    training = {r["group"] for r in rows_of(points_dir / "points.csv") if r["image"] not in validation_images}
    assert groups and not groups & training  # no patient in both sets


def test_the_malignancy_task_trains_validates_and_predicts(phantom_dir, cache_root, tmp_path):
    config = tiny_config(
        tmp_path / "tiny.yaml", phantom_dir, tmp_path / "cache", tmp_path / "runs", val_stride=4
    )
    base = yaml.safe_load(config.read_text())
    base["data"] = {
        "class_path": "luna.luna16.datamodule.MalignancyDataModule",
        "init_args": {k: v for k, v in base["data"].items() if k != "phantom"},
    }
    base["checkpoint"] = {"monitor": "val/auroc", "mode": "max"}
    config.write_text(yaml.safe_dump(base))
    cli = main(["--config", str(config)])
    assert {"val/f1", "val/auroc"} <= set(
        cli.trainer.callback_metrics
    ) and "val/cpm" not in cli.trainer.callback_metrics
    table = Luna16Malignancy(phantom_dir).table()
    assert table.class_names == ["benign", "malignant"] and set(table.label.tolist()) == {0, 1}
    out = tmp_path / "malignancy.csv"
    main(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={tmp_path / 'runs/version_0/checkpoints/last.ckpt'}",
            f"--predictions.path={out}",
        ]
    )
    assert list(rows_of(out)[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def test_the_phantom_makes_malignancy_learnable(phantom_dir):
    rows = rows_of(phantom_dir / "annotations_with_malignancy.csv")
    malignant = [float(r["diameter_mm"]) for r in rows if r["mal_bool"] == "True"]
    benign = [float(r["diameter_mm"]) for r in rows if r["mal_bool"] == "False"]
    assert malignant and benign and np.mean(malignant) > np.mean(benign) + 5


def test_a_missing_malignancy_file_is_named(phantom_copy):
    (phantom_copy / "annotations_with_malignancy.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations_with_malignancy\.csv.*chapter 14"):
        Luna16Malignancy(phantom_copy).fingerprint()


@pytest.mark.e2e
def test_ddp_multiclass_metrics_equal_one_process(points_dir, tmp_path):
    config = points_config(
        tmp_path / "points.yaml", points_dir / "points.csv", tmp_path / "cache", tmp_path / "runs"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(subcommand, *args):
        done = subprocess.run(
            [sys.executable, "-m", "luna.fit", subcommand, "--config", str(config), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    run("fit")
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    results = {}
    for number, (name, extra) in enumerate(
        (("one", []), ("two", ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]))
    ):
        run("validate", f"--ckpt_path={checkpoint}", *extra)
        validated = (
            tmp_path / "runs" / "version_0" / "validate" / f"version_{number}"
        )  # in the checkpoint's run
        logged = [r for r in rows_of(validated / "metrics.csv") if r.get("val/f1")][-1]
        results[name] = {k: float(v) for k, v in logged.items() if k.startswith("val/") and v}
    assert results["one"]["val/samples"] == results["two"]["val/samples"] > 0
    assert set(results["one"]) == set(results["two"]) and "val/recall/cavity" in results["one"]
    for key, value in results["one"].items():
        assert results["two"][key] == pytest.approx(value, abs=1e-6), key


def bad_csv(points_dir: Path, tmp_path: Path, edit) -> Path:
    folder = Path(shutil.copytree(points_dir, tmp_path / "points"))
    lines = (folder / "points.csv").read_text().splitlines()
    lines = edit(lines)
    (folder / "points.csv").write_text("\n".join(lines) + "\n")
    return folder / "points.csv"


def replace_field(lines, line_number, column, value):
    header = lines[0].split(",")
    fields = lines[line_number - 1].split(",")
    fields[header.index(column)] = value
    lines[line_number - 1] = ",".join(fields)
    return lines


@pytest.mark.parametrize(
    "case, edit, message",
    [
        (
            "missing file",
            lambda lines: replace_field(lines, 3, "image", "images/nothere.nii.gz"),
            r"points\.csv, line 3, column image: .*nothere\.nii\.gz does not exist",
        ),
        (
            "unreadable image",
            None,
            r"points\.csv, line \d+, column image: .*case000\.nii\.gz cannot be read as a volume",
        ),
        (
            "unknown column",
            lambda lines: [lines[0] + ",weight"] + [line + ",1" for line in lines[1:]],
            r"points\.csv, line 1: unknown column\(s\) weight",
        ),
        (
            "outside",
            lambda lines: replace_field(lines, 4, "coordX", "9999"),
            r"points\.csv, line 4, columns coordX,coordY,coordZ: .* lies outside",
        ),
        (
            "one class",
            lambda lines: (
                [lines[0]]
                + [",".join(line.split(",")[:4] + ["solid"] + line.split(",")[5:]) for line in lines[1:]]
            ),
            r"points\.csv, column label: every row has the label 'solid'",
        ),
        (
            "nan",
            lambda lines: replace_field(lines, 2, "coordZ", "nan"),
            r"points\.csv, line 2, column coordZ: 'nan'",
        ),
        (
            "two groups",
            lambda lines: replace_field(lines, 2, "group", "someone-else"),
            r"points\.csv, line \d+, column group/fold: image images/case000\.nii\.gz has group",
        ),
    ],
)
def test_bad_points_csvs_name_the_file_line_and_column(points_dir, tmp_path, case, edit, message):
    if case == "unreadable image":
        path = bad_csv(points_dir, tmp_path, lambda lines: lines)
        (path.parent / "images" / "case000.nii.gz").write_bytes(b"not a volume")
    else:
        path = bad_csv(points_dir, tmp_path, edit)
    with pytest.raises(CsvFormatError, match=message):
        PointsCsv(path).table()


def test_integer_labels_name_themselves_and_names_are_numbered_in_sorted_order(points_dir, tmp_path):
    table = PointsCsv(points_dir / "points.csv").table()
    assert table.class_names == ["calcified", "cavity", "solid"]
    names = [r["label"] for r in rows_of(points_dir / "points.csv")]
    assert [table.class_names[k] for k in table.label] == names
    numbered = bad_csv(
        points_dir,
        tmp_path,
        lambda lines: (
            [lines[0]]
            + [
                ",".join(
                    line.split(",")[:4]
                    + [str(["calcified", "cavity", "solid"].index(line.split(",")[4]))]
                    + line.split(",")[5:]
                )
                for line in lines[1:]
            ]
        ),
    )
    assert PointsCsv(numbered).table().class_names == ["0", "1", "2"]
