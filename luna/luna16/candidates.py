"""The LUNA16 candidate list: parse the two CSVs, join diameters, order like the reference code.

Everything here is pure (files in, values out) so that the rules of LUNA16.md can be tested
without a single scan on disk:

* **Join**: a candidate takes the diameter of the *first* annotation (file order) of its series
  whose centre lies within ``diameter / 4`` of the candidate's centre on each of x, y and z;
  otherwise its diameter is 0. ``is_nodule`` comes from the ``class`` column, never from the join.
* **Order**: descending on ``(is_nodule, diameter_mm, series_uid, center_xyz)``, i.e. positives
  first, biggest first. Splits that stride over candidates rely on this order.
"""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.io.csvfile import CsvFormatError, read_columns
from luna.luna16.annotations import read_annotations

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")


def matching_diameters(
    centers_xyz: np.ndarray, annotation_xyz: np.ndarray, annotation_diameters: np.ndarray
) -> np.ndarray:
    """For each candidate centre ``[n, 3]``, the diameter of the first annotation (file order) whose
    centre is within diameter/4 of it on every axis (inclusive), else 0."""
    inside = np.all(
        np.abs(centers_xyz[:, None, :] - annotation_xyz[None, :, :])
        <= annotation_diameters[None, :, None] / 4,
        axis=2,
    )
    return np.where(inside.any(axis=1), annotation_diameters[inside.argmax(axis=1)], 0.0)


@dataclass(frozen=True)
class CandidateArrays:
    """The joined candidate list as columns, in the reference order (what the crop cache reads).

    Attributes:
        series_uids: the series of the list, sorted by uid.
        series: ``[n]`` int64, each candidate's series (an index into ``series_uids``).
        center_xyz: ``[n, 3]`` float64 millimetres.
        is_nodule: ``[n]`` bool, the ``class`` column.
        diameter_mm: ``[n]`` float64, the joined diameter (0 when no annotation matches).
    """

    series_uids: list[str]
    series: np.ndarray
    center_xyz: np.ndarray
    is_nodule: np.ndarray
    diameter_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.series)


def load_candidate_arrays(
    annotations_csv: str | Path,
    candidates_csv: str | Path,
    series_uids: set[str] | None = None,
) -> CandidateArrays:
    """Read, join and order the LUNA16 candidate list, as columns (no Python object per candidate:
    755k of them in V2).

    Args:
        annotations_csv: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``).
        candidates_csv: ``candidates.csv`` or ``candidates_V2.csv``
            (``seriesuid,coordX,coordY,coordZ,class``).
        series_uids: keep only candidates of these series (e.g. the scans on disk); None keeps all.

    Returns:
        The candidates in the reference order (positives first, biggest first).

    Raises:
        FileNotFoundError: a CSV is missing.
        CsvFormatError: a header lacks a column, a value is not a finite number or a diameter not
            positive, a class is not 0 or 1, or the candidates file has no row.
    """
    with (
        _collector_paused()
    ):  # millions of new rows and tuples: the cyclic GC would rescan them over and over
        return _load_candidates(Path(annotations_csv), Path(candidates_csv), series_uids)


def _load_candidates(
    annotations_csv: Path, candidates_csv: Path, series_uids: set[str] | None
) -> CandidateArrays:
    annotations = read_annotations(annotations_csv).by_series()
    table = read_columns(candidates_csv, CANDIDATE_COLUMNS, "LUNA16 CSV file")
    if not len(table):
        raise CsvFormatError(f"{table.path}: no candidate rows after the header")
    labels = [label.strip() for label in table.columns["class"]]
    for line_number, label in zip(table.line_numbers, labels, strict=True):
        if label not in ("0", "1"):
            raise CsvFormatError(f"{table.path}, line {line_number}, column class: {label!r} is not 0 or 1")
    uids, centers = table.text("seriesuid"), table.xyz()
    rows_by_series: dict[str, list[int]] = defaultdict(list)
    for row, uid in enumerate(uids):
        if series_uids is None or uid in series_uids:
            rows_by_series[uid].append(row)
    diameters = np.zeros(len(uids))
    for uid, rows in rows_by_series.items():
        if uid in annotations:
            diameters[rows] = matching_diameters(centers[rows], *annotations[uid])
    sorted_uids = sorted(rows_by_series)
    series_rank = {uid: rank for rank, uid in enumerate(sorted_uids)}
    kept = np.array(sorted(row for rows in rows_by_series.values() for row in rows), dtype=np.int64)
    is_nodule = np.array([label == "1" for label in labels], dtype=bool)
    ranks = np.fromiter((series_rank[uids[k]] for k in kept.tolist()), dtype=np.int64, count=len(kept))
    order = reference_order(is_nodule[kept], diameters[kept], ranks, centers[kept])
    ordered = kept[order]
    return CandidateArrays(
        sorted_uids, ranks[order], centers[ordered].reshape(-1, 3), is_nodule[ordered], diameters[ordered]
    )


def reference_order(
    is_nodule: np.ndarray, diameter_mm: np.ndarray, series_rank: np.ndarray, center_xyz: np.ndarray
) -> np.ndarray:
    """Positions that sort candidates descending on (is_nodule, diameter_mm, series_uid, center_xyz).

    ``series_rank`` is each candidate's uid's rank among the sorted uids. This is the order of
    ``sorted(candidates, key=lambda c: (c.is_nodule, c.diameter_mm, c.series_uid, c.center_xyz),
    reverse=True)`` (the book's namedtuple order), computed with ``numpy.lexsort``:
    at LUNA16 scale (755k rows, most sharing the first keys and a long uid prefix) Python's tuple
    comparisons take seconds.
    """
    keys = (center_xyz[:, 2], center_xyz[:, 1], center_xyz[:, 0], series_rank, diameter_mm, is_nodule)
    return np.lexsort(keys)[::-1]


@contextmanager
def _collector_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
