"""`python -m luna.evaluate`: the files of a LUNA16 evaluation, bad inputs, the report."""

import csv
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from luna.cli.evaluate import cli, main
from luna.io.csvfile import CsvFormatError
from luna.luna16.scoring import evaluate_submission, read_series_list
from tests.helpers import run_cli

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_predictions(path, rows, columns=COLUMNS):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def oracle(phantom_dir, tmp_path_factory):
    """Predictions for every candidate: 0.9 on nodules, 0.1 elsewhere, and the data folder."""
    path = tmp_path_factory.mktemp("evaluate") / "predictions.csv"
    rows = [
        [r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"], 0.9 if r["class"] == "1" else 0.1]
        for r in rows_of(phantom_dir / "candidates.csv")
    ]
    return write_predictions(path, rows), phantom_dir


def test_a_perfect_ranking_detects_every_nodule_before_any_false_positive(oracle):
    predictions, data_dir = oracle
    evaluation = evaluate_submission(predictions, data_dir, bootstrap_samples=0)
    listed = read_series_list(data_dir / "seriesuids.csv")
    nodules = [r for r in rows_of(data_dir / "annotations.csv") if r["seriesuid"] in listed]
    counts = evaluation.result.counts
    assert counts.scans == len(listed) and counts.nodules == len(nodules) == counts.detected
    assert evaluation.result.cpm == 1.0
    assert evaluation.unevaluated_rows == 4  # the phantom's two series that are not on disk
    assert counts.irrelevant_marks > 0  # the phantom's candidates on irrelevant findings


def test_the_command_line_prints_the_table_and_writes_json_and_png(oracle, tmp_path):
    predictions, data_dir = oracle
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.evaluate",
            str(predictions),
            "--data_dir",
            str(data_dir),
            "--output",
            str(tmp_path / "out"),
            "--bootstrap",
            "50",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "CPM 1.000 (95 % CI 1.000-1.000, 50 bootstrap resamples of the scans, seed 3)" in result.stdout
    assert result.stdout.count("\n    0.125        1.000") == 1
    record = json.loads((tmp_path / "out" / "froc.json").read_text())
    assert record["fp_per_scan"] == [0.125, 0.25, 0.5, 1, 2, 4, 8]
    assert record["sensitivity"] == [1.0] * 7 and record["cpm"] == 1.0 and record["cpm_ci"] == [1.0, 1.0]
    for key in ("scans", "nodules", "detected", "false_positives", "irrelevant_marks", "unevaluated_rows"):
        assert isinstance(record[key], int), key
    assert record["unevaluated_rows"] == 4 and "rows of unevaluated series: 4" in result.stdout
    assert (tmp_path / "out" / "froc.png").stat().st_size > 10_000


def test_the_same_seed_gives_the_same_interval(oracle, tmp_path):
    predictions, data_dir = oracle
    noisy = np.random.default_rng(0).random(len(rows_of(predictions)))
    rows = [
        [r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"], p]
        for r, p in zip(rows_of(predictions), noisy, strict=True)
    ]
    path = write_predictions(tmp_path / "noisy.csv", rows)
    first, again = (
        evaluate_submission(path, data_dir, bootstrap_samples=100, seed=5).result.bootstrap for _ in range(2)
    )
    assert first.cpm_ci == again.cpm_ci and np.array_equal(first.sensitivity_ci, again.sensitivity_ci)


def test_columns_are_found_by_name_in_any_order(oracle, tmp_path):
    predictions, data_dir = oracle
    rows = rows_of(predictions)
    shuffled = ["probability", "coordZ", "extra", "seriesuid", "coordY", "coordX"]
    path = write_predictions(
        tmp_path / "any_order.csv", [[r.get(c, "x") for c in shuffled] for r in rows], shuffled
    )
    assert evaluate_submission(path, data_dir, bootstrap_samples=0).result.cpm == 1.0


def test_an_evaluated_scan_without_rows_has_its_nodules_missed(oracle, tmp_path):
    predictions, data_dir = oracle
    rows = rows_of(predictions)
    nodules = rows_of(data_dir / "annotations.csv")
    uid = nodules[0]["seriesuid"]
    kept = [[r[c] for c in COLUMNS] for r in rows if r["seriesuid"] != uid]
    result = evaluate_submission(
        write_predictions(tmp_path / "without.csv", kept), data_dir, bootstrap_samples=0
    ).result
    missed = sum(n["seriesuid"] == uid for n in nodules)
    assert result.counts.detected == result.counts.nodules - missed
    assert result.cpm == pytest.approx((result.counts.nodules - missed) / result.counts.nodules)


def test_no_irrelevant_findings_file_warns_and_scores_lower(oracle, tmp_path, caplog):
    predictions, data_dir = oracle
    copy = shutil.copytree(
        data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("*.raw", "seg-lungs-LUNA16")
    )
    (copy / "annotations_excluded.csv").unlink()
    rows = rows_of(predictions)
    rng = np.random.default_rng(1)
    noisy = [
        [r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"], float(r["probability"]) + rng.normal(0, 0.3)]
        for r in rows
    ]
    path = write_predictions(tmp_path / "noisy.csv", noisy)
    with caplog.at_level(logging.WARNING):
        without = evaluate_submission(path, copy, bootstrap_samples=0)
    assert any(
        "annotations_excluded.csv not found" in r.getMessage() and "lower than the official" in r.getMessage()
        for r in caplog.records
    )
    with_findings = evaluate_submission(path, data_dir, bootstrap_samples=0)
    assert not without.irrelevant_findings and without.result.counts.irrelevant_marks == 0
    assert without.result.counts.false_positives > with_findings.result.counts.false_positives
    assert without.result.cpm <= with_findings.result.cpm


def test_without_seriesuids_the_scans_on_disk_are_evaluated_and_subsets_select_a_fold(oracle, tmp_path):
    predictions, data_dir = oracle
    copy = shutil.copytree(data_dir, tmp_path / "data")
    (copy / "seriesuids.csv").unlink()
    evaluation = evaluate_submission(predictions, copy, bootstrap_samples=0)
    assert evaluation.scans == sorted(read_series_list(data_dir / "seriesuids.csv"))
    assert "subset*" in evaluation.scans_from
    fold = evaluate_submission(predictions, data_dir, subsets=[1], bootstrap_samples=0)
    assert set(fold.scans) == {p.stem for p in (data_dir / "subset1").glob("*.mhd")}
    with pytest.raises(FileNotFoundError, match="subset7"):
        evaluate_submission(predictions, data_dir, subsets=[7], bootstrap_samples=0)


def test_a_series_list_evaluates_only_its_scans_and_a_missing_one_is_named(oracle, tmp_path):
    predictions, data_dir = oracle
    chosen = read_series_list(data_dir / "seriesuids.csv")[::5]
    (tmp_path / "validation.txt").write_text("\n".join(chosen) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.evaluate",
            str(predictions),
            "--data_dir",
            str(data_dir),
            "--series",
            str(tmp_path / "validation.txt"),
            "--output",
            str(tmp_path),
            "--bootstrap",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "froc.json").read_text())
    nodules = [r for r in rows_of(data_dir / "annotations.csv") if r["seriesuid"] in chosen]
    assert (
        report["scans"] == len(chosen)
        and report["nodules"] == len(nodules)
        and report["scans_from"].endswith("validation.txt")
    )
    assert report["unevaluated_rows"] > 0  # the rows of every other scan
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        evaluate_submission(predictions, data_dir, bootstrap_samples=0, series_list=tmp_path / "nothere.txt")


def test_the_series_list_has_no_header_and_no_duplicates(tmp_path, caplog):
    listed = tmp_path / "seriesuids.csv"
    listed.write_text("seriesuid\n1.2.3\n1.2.4\n")
    with caplog.at_level(logging.WARNING):
        assert read_series_list(listed) == ["1.2.3", "1.2.4"]
    assert "header" in caplog.text
    listed.write_text("1.2.3\n1.2.4\n1.2.3\n")
    with pytest.raises(
        CsvFormatError, match=r"seriesuids\.csv, line 3: series 1\.2\.3 is listed twice \(first on line 1\)"
    ):
        read_series_list(listed)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing column", r"bad\.csv, line 1: missing column\(s\) probability"),
        ("word", r"bad\.csv, line 3, column probability: 'high' is not a number"),
        ("nan", r"bad\.csv, line 3, column probability: 'nan' is not a finite number"),
        ("inf coordinate", r"bad\.csv, line 2, column coordY: 'inf' is not a finite number"),
        ("empty", r"bad\.csv: the file is empty"),
        ("short row", r"bad\.csv, line 3: expected 5 values, found 4"),
    ],
)
def test_bad_prediction_files_name_the_file_line_and_column(
    oracle, tmp_path, case, message, capsys, monkeypatch
):
    predictions, data_dir = oracle
    uid = rows_of(predictions)[0]["seriesuid"]
    bad = tmp_path / "bad.csv"
    contents = {
        "missing column": "seriesuid,coordX,coordY,coordZ\n" + f"{uid},1,2,3\n",
        "word": "seriesuid,coordX,coordY,coordZ,probability\n" + f"{uid},1,2,3,0.5\n{uid},1,2,3,high\n",
        "nan": "seriesuid,coordX,coordY,coordZ,probability\n" + f"{uid},1,2,3,0.5\n{uid},1,2,3,nan\n",
        "inf coordinate": "seriesuid,coordX,coordY,coordZ,probability\n" + f"{uid},1,inf,3,0.5\n",
        "empty": "",
        "short row": "seriesuid,coordX,coordY,coordZ,probability\n" + f"{uid},1,2,3,0.5\n{uid},1,2,3\n",
    }[case]
    bad.write_text(contents)
    with pytest.raises(CsvFormatError, match=message):
        evaluate_submission(bad, data_dir, bootstrap_samples=0)
    code, stderr = run_cli(
        [str(bad), "--data_dir", str(data_dir), "--output", str(tmp_path / "out")], capsys, monkeypatch, cli
    )
    assert code == 2 and "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_a_header_only_file_misses_everything_and_a_missing_file_is_named(oracle, tmp_path, caplog):
    predictions, data_dir = oracle
    empty = write_predictions(tmp_path / "header_only.csv", [])
    with caplog.at_level(logging.WARNING):
        result = evaluate_submission(empty, data_dir, bootstrap_samples=0).result
    assert result.cpm == 0.0 and result.counts.detected == 0 and "no row for the" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"predictions CSV .*nothere\.csv"):
        evaluate_submission(tmp_path / "nothere.csv", data_dir)


def test_nan_in_the_findings_names_the_file(oracle, tmp_path):
    predictions, data_dir = oracle
    copy = shutil.copytree(
        data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("*.raw", "seg-lungs-LUNA16")
    )
    lines = (copy / "annotations_excluded.csv").read_text().splitlines()
    fields = lines[1].split(",")
    lines[1] = ",".join(fields[:4] + ["nan"])
    (copy / "annotations_excluded.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CsvFormatError, match=r"annotations_excluded\.csv, line 2, column diameter_mm: 'nan'"):
        evaluate_submission(predictions, copy, bootstrap_samples=0)


def test_rows_written_twice_are_named_and_a_file_changed_since_predict_is_seen(oracle, tmp_path, caplog):
    predictions, data_dir = oracle
    lines = predictions.read_text().splitlines()
    doubled = tmp_path / "predictions.csv"
    doubled.write_text("\n".join([*lines, *lines[1:]]) + "\n")  # the rows appended a second time
    (tmp_path / "predictions.json").write_text(
        json.dumps({"rows": len(lines) - 1, "data_dir": str(data_dir)})
    )
    with caplog.at_level(logging.WARNING):
        assert main([str(doubled), "--bootstrap", "0"]) == 0
    assert (
        f"{len(lines) - 1} rows repeat an earlier row's series and position (e.g. line {len(lines) + 1} "
        "repeats "
        "line 2)" in caplog.text
    )
    assert (
        f"holds {2 * (len(lines) - 1)} rows, but {len(lines) - 1} were written by the run that made it"
        in caplog.text
    )


def test_a_record_of_scans_the_data_does_not_have_is_refused(oracle, tmp_path):
    predictions, data_dir = oracle
    copy = tmp_path / "predictions.csv"
    shutil.copy(predictions, copy)
    scans = read_series_list(data_dir / "seriesuids.csv")
    (tmp_path / "predictions.json").write_text(
        json.dumps({"images": [*scans[:2], "1.2.3.not-here"], "data_dir": str(data_dir)})
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"predictions\.json lists 1 scan\(s\) that .* does not have "
        r"\(e\.g\. 1\.2\.3\.not-here\)",
    ):
        main([str(copy), "--bootstrap", "0"])


def test_a_missing_predictions_file_is_named_first(tmp_path, capsys, monkeypatch):
    code, stderr = run_cli([str(tmp_path / "missing.csv")], capsys, monkeypatch, cli)
    assert (
        code == 2
        and stderr.strip().splitlines()[-1]
        == f"error: the predictions file {tmp_path / 'missing.csv'} does not exist"
    )
