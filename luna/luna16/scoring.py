"""The files of a LUNA16 evaluation: a submission of predictions, the findings and the scan list.

``evaluate_submission`` is what ``python -m luna.evaluate`` and the cross-validation run: it reads
the files as the official script does (columns found by header name, in any order), checks them
(errors name the file, the line and the column), keeps the rows of the evaluated scans and scores
them with ``luna.evaluation.froc``.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.evaluation.froc import Findings, FrocResult, Marks, Reference, froc
from luna.io.csvfile import PROBABILITY_COLUMN, XYZ_COLUMNS, CsvFormatError, read_columns
from luna.luna16.annotations import ANNOTATIONS, IRRELEVANT_FINDINGS, read_annotations
from luna.luna16.release import find_scans

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("seriesuid", *XYZ_COLUMNS, PROBABILITY_COLUMN)  # LUNA16's submission format
SERIES_LIST = "seriesuids.csv"


@dataclass(frozen=True)
class Submission:
    """Rows of a predictions CSV (``seriesuid,coordX,coordY,coordZ,probability``), in file order."""

    path: Path
    series_uid: list[str]
    center_xyz: np.ndarray
    probability: np.ndarray

    def __len__(self) -> int:
        return len(self.series_uid)


@dataclass(frozen=True)
class SubmissionScore:
    """A scored submission: the FROC result and what was read to get it.

    Attributes:
        result: the FROC analysis.
        scans: the evaluated series uids, in list order.
        scans_from: where that list came from (``seriesuids.csv`` or the ``subset*`` folders).
        unevaluated_rows: prediction rows of series outside the list (ignored).
        irrelevant_findings: whether ``annotations_excluded.csv`` was used.
        marks, reference: what was scored (for ``cpm_resamples``: paired comparisons of systems).
    """

    result: FrocResult
    scans: list[str]
    scans_from: str
    unevaluated_rows: int
    irrelevant_findings: bool
    marks: Marks
    reference: Reference


def read_predictions(path: str | Path) -> Submission:
    """A predictions CSV; every coordinate and probability must be a finite number.

    Raises:
        FileNotFoundError, CsvFormatError: naming the file, and the line and column when a value
            is wrong.
    """
    table = read_columns(path, PREDICTION_COLUMNS, "predictions CSV")
    submission = Submission(
        path=Path(path),
        series_uid=table.text("seriesuid"),
        center_xyz=table.xyz(),
        probability=table.numbers("probability"),
    )
    repeated = repeated_rows(submission.series_uid, submission.center_xyz)
    if len(repeated):
        later, earlier = repeated[0]
        log.warning(
            "%s: %d rows repeat an earlier row's series and position (e.g. line %d repeats line %d): the "
            "official script counts every copy, so repeated false positives count again and CPM drops; "
            "remove the copies (was the file written twice?)",
            path,
            len(repeated),
            table.line_numbers[later],
            table.line_numbers[earlier],
        )
    return submission


def repeated_rows(series_uid: list[str], center_xyz: np.ndarray) -> np.ndarray:
    """``[n, 2]`` pairs (row, the first earlier row with the same series and centre), in row order."""
    if not len(series_uid):
        return np.empty((0, 2), dtype=np.int64)
    _, series = np.unique(np.asarray(series_uid), return_inverse=True)
    order = np.lexsort((np.arange(len(series)), *center_xyz.T[::-1], series))
    keys = np.column_stack([series, center_xyz])[order]
    same = np.r_[False, (keys[1:] == keys[:-1]).all(axis=1)]
    first = order[np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))]
    pairs = np.column_stack([order[same], first[same]])
    return pairs[np.argsort(pairs[:, 0])]


def read_series_list(path: str | Path) -> list[str]:
    """``seriesuids.csv``: one series uid per line, no header (as the release ships it).

    A first line ``seriesuid`` is taken for a header and skipped with a warning: the official
    script would count it as one more scan.

    Raises:
        CsvFormatError: the list is empty or names a series twice.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        lines = [
            (number, row[0].strip())
            for number, row in enumerate(csv.reader(handle), start=1)
            if row and row[0].strip()
        ]
    if lines and lines[0][1] == "seriesuid":
        log.warning("%s starts with a header line 'seriesuid'; the release's file has none: skipped it", path)
        lines = lines[1:]
    if not lines:
        raise CsvFormatError(f"{path}: no series uid in the file; expected one uid per line")
    first_line: dict[str, int] = {}
    for number, uid in lines:
        if uid in first_line:
            raise CsvFormatError(
                f"{path}, line {number}: series {uid} is listed twice (first on line {first_line[uid]})"
            )
        first_line[uid] = number
    return [uid for _, uid in lines]


def read_reference(
    data_dir: str | Path,
    scans: list[str],
    annotations_file: str = ANNOTATIONS,
    irrelevant_file: str = IRRELEVANT_FINDINGS,
) -> Reference:
    """The findings of ``scans`` in a LUNA16 folder: ``annotations.csv`` and, when present,
    ``annotations_excluded.csv`` (without it, a warning: marks on irrelevant findings then count
    as false positives and CPM is lower than the official one)."""
    data_dir = Path(data_dir)
    scan_index = {uid: k for k, uid in enumerate(scans)}
    nodules = read_annotations(data_dir / annotations_file).findings(scan_index)
    excluded_path = data_dir / irrelevant_file
    if excluded_path.is_file():
        irrelevant = read_annotations(excluded_path, unknown_diameters=True).findings(scan_index)
    else:
        log.warning(
            "%s not found: marks on irrelevant findings count as false positives, so this CPM is lower "
            "than the official one",
            excluded_path,
        )
        irrelevant = Findings.empty()
    return Reference(list(scans), nodules, irrelevant)


def prediction_record(predictions: str | Path) -> dict:
    """What ``luna.fit predict`` recorded beside a predictions CSV (its ``.json``); empty when
    there is no readable record."""
    about = Path(predictions).with_suffix(".json")
    try:
        record = json.loads(about.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def predicted_scans(predictions: str | Path) -> tuple[list[str], Path] | None:
    """The scans ``luna.fit predict`` recorded beside a predictions CSV (its ``.json``), or None."""
    images = prediction_record(predictions).get("images")
    return (
        (list(images), Path(predictions).with_suffix(".json"))
        if isinstance(images, list) and images
        else None
    )


def predicted_data_dir(predictions: str | Path) -> Path | None:
    """The data folder ``luna.fit predict`` recorded beside a predictions CSV, or None."""
    data_dir = prediction_record(predictions).get("data_dir")
    return Path(data_dir) if isinstance(data_dir, str) and data_dir else None


def evaluated_scans(
    data_dir: str | Path,
    subsets: list[int] | None = None,
    series_list: str | Path | None = None,
    predicted: tuple[list[str], Path] | None = None,
) -> tuple[list[str], str]:
    """The evaluated scans of a LUNA16 folder, and where the list came from.

    ``series_list`` (a file like ``seriesuids.csv``, e.g. the scans of a validation split) when
    given; else ``predicted`` (the scans ``luna.fit predict`` recorded: a validation split, a
    fold) when given; else ``seriesuids.csv`` when present, else the scans under ``subset*/``.
    ``subsets`` keeps only the scans found in those ``subsetK`` folders (e.g. one
    cross-validation fold).
    """
    data_dir = Path(data_dir)
    listed = Path(series_list) if series_list is not None else data_dir / SERIES_LIST
    if series_list is not None and not listed.is_file():
        raise FileNotFoundError(f"series list {listed} not found")
    if series_list is None and predicted is not None:
        scans, source = predicted[0], f"the {len(predicted[0])} scans predicted, listed in {predicted[1]}"
        known = set(read_series_list(listed)) if listed.is_file() else set(find_scans(data_dir))
        unknown = [uid for uid in scans if uid not in known]
        if unknown:
            raise FileNotFoundError(
                f"{predicted[1]} lists {len(unknown)} scan(s) that {data_dir} does not have "
                f"(e.g. {unknown[0]}): the predictions are about other data; give that data's "
                "folder (--data_dir) or the scans to evaluate (--series FILE)"
            )
    elif listed.is_file():
        scans, source = read_series_list(listed), str(listed)
    else:
        scans, source = sorted(find_scans(data_dir)), f"the scans under {data_dir}/subset*/"
        if not scans:
            raise FileNotFoundError(
                f"no {SERIES_LIST} and no scans under {data_dir}/subset*/: nothing to evaluate"
            )
    if subsets is not None:
        folders = {f"subset{k}" for k in subsets}
        in_folders = {uid for uid, path in find_scans(data_dir).items() if path.parent.name in folders}
        scans = [uid for uid in scans if uid in in_folders]
        source += f", in {', '.join(sorted(folders))}"
        if not scans:
            raise FileNotFoundError(
                f"no evaluated scan lies in {', '.join(sorted(folders))} under {data_dir}"
            )
    return scans, source


def evaluate_submission(
    predictions: str | Path | Submission,
    data_dir: str | Path,
    subsets: list[int] | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    series_list: str | Path | None = None,
    predicted: tuple[list[str], Path] | None = None,
) -> SubmissionScore:
    """Score a predictions CSV against the findings of a LUNA16 folder, as the official script.

    Args:
        predictions: the CSV (``seriesuid,coordX,coordY,coordZ,probability``), or its rows.
        data_dir: holds ``annotations.csv``, ``annotations_excluded.csv`` (optional, with a
            warning) and ``seriesuids.csv`` or the ``subset*`` folders.
        subsets: evaluate only the scans of these subsets (a cross-validation fold).
        bootstrap_samples: resamples for the 95 % interval (0: none).
        seed: seeds the bootstrap.
        series_list: evaluate only the scans listed in this file (one uid per line, no header),
            instead of ``seriesuids.csv`` or the ``subset*`` folders.
        predicted: the scans a ``predict`` run recorded (``predicted_scans``): evaluated instead of
            ``seriesuids.csv`` or the ``subset*`` folders, unless ``series_list`` is given.
    """
    data_dir = Path(data_dir)
    submission = predictions if isinstance(predictions, Submission) else read_predictions(predictions)
    scans, scans_from = evaluated_scans(data_dir, subsets, series_list, predicted)
    reference = read_reference(data_dir, scans)
    scan_index = reference.scan_index()
    scan = np.fromiter(
        (scan_index.get(uid, -1) for uid in submission.series_uid), dtype=np.int64, count=len(submission)
    )
    evaluated = scan >= 0
    unevaluated = int((~evaluated).sum())
    if unevaluated:
        outside = {uid for uid in submission.series_uid if uid not in scan_index}
        log.warning(
            "%d rows of %s belong to %d series outside the evaluated scans: ignored",
            unevaluated,
            submission.path,
            len(outside),
        )
    if not evaluated.any():
        log.warning(
            "%s has no row for the %d evaluated scans: every nodule is missed", submission.path, len(scans)
        )
    else:
        silent = len(scans) - len(np.unique(scan[evaluated]))
        if silent > len(scans) / 2:
            log.warning(
                "%d of the %d evaluated scans (%s) have no row in %s: their nodules count as missed and CPM "
                "is low for that reason. To score only the predicted scans, pass --series FILE, or keep the "
                ".json that luna.fit predict writes beside the predictions",
                silent,
                len(scans),
                scans_from,
                submission.path,
            )
    marks = Marks(
        scan=scan[evaluated],
        center_xyz=submission.center_xyz[evaluated].reshape(-1, 3),
        probability=submission.probability[evaluated],
    )
    result = froc(marks, reference, bootstrap_samples, seed)
    return SubmissionScore(
        result, scans, scans_from, unevaluated, (data_dir / IRRELEVANT_FINDINGS).is_file(), marks, reference
    )
