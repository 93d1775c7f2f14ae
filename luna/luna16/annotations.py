"""LUNA16's findings files: ``annotations.csv`` (the nodules) and ``annotations_excluded.csv``
(irrelevant findings), read once for the candidate join and for the scoring alike.

A nodule's diameter is a positive number of millimetres. An irrelevant finding may have a
negative one (the release writes -1: unknown, scored as 10 mm), never 0. A 0 or negative
diameter in ``annotations.csv`` would join no candidate and be hit by no mark, silently; it is an
error naming the file and the line.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.evaluation.froc import Findings
from luna.io.csvfile import CsvFormatError, read_columns

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
ANNOTATIONS = "annotations.csv"
IRRELEVANT_FINDINGS = "annotations_excluded.csv"


@dataclass(frozen=True)
class Annotations:
    """The rows of a findings file, in file order (series uids stripped of surrounding spaces)."""

    path: Path
    series_uid: list[str]
    center_xyz: np.ndarray
    diameter_mm: np.ndarray

    def by_series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{series_uid: (centers_xyz [m, 3], diameters_mm [m])}``, rows in file order."""
        rows: dict[str, list[int]] = defaultdict(list)
        for row, uid in enumerate(self.series_uid):
            rows[uid].append(row)
        return {uid: (self.center_xyz[picked], self.diameter_mm[picked]) for uid, picked in rows.items()}

    def findings(self, scan_index: dict[str, int]) -> Findings:
        """The findings of the evaluated scans (``scan_index``: uid -> position), in file order."""
        rows = np.array([k for k, uid in enumerate(self.series_uid) if uid in scan_index], dtype=np.int64)
        return Findings(
            scan=np.array([scan_index[self.series_uid[k]] for k in rows], dtype=np.int64),
            center_xyz=self.center_xyz[rows].reshape(-1, 3),
            diameter_mm=self.diameter_mm[rows],
        )


def read_annotations(path: str | Path, unknown_diameters: bool = False) -> Annotations:
    """A findings file; every coordinate and diameter a finite number, every diameter positive
    (or, with ``unknown_diameters``, negative: unknown; never 0).

    Raises:
        FileNotFoundError, CsvFormatError: naming the file, and the line and column of a bad value.
    """
    table = read_columns(path, COLUMNS, "LUNA16 annotations CSV")
    diameters = table.numbers("diameter_mm")
    bad = diameters == 0 if unknown_diameters else diameters <= 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        allowed = (
            "a positive diameter, or a negative one for an unknown size"
            if unknown_diameters
            else f"a positive diameter (a negative one, unknown size, is for {IRRELEVANT_FINDINGS} only)"
        )
        raise CsvFormatError(
            f"{table.path}, line {table.line_numbers[row]}, column diameter_mm: "
            f"{table.columns['diameter_mm'][row].strip()!r} is not {allowed}"
        )
    return Annotations(table.path, table.text("seriesuid"), table.xyz(), diameters)
