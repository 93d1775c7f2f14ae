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

import csv
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")


class CsvFormatError(ValueError):
    """A LUNA16 CSV that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of ``candidates.csv`` after the join with ``annotations.csv``.

    Attributes:
        series_uid: the CT series (the ``.mhd`` file's stem).
        center_xyz: candidate centre in millimetres, patient coordinates (x, y, z).
        is_nodule: the ``class`` column (1 = nodule).
        diameter_mm: diameter of the matching annotation, 0.0 when none matches.
    """

    series_uid: str
    center_xyz: tuple[float, float, float]
    is_nodule: bool
    diameter_mm: float


def reference_sort_key(candidate: Candidate) -> tuple:
    """The book's namedtuple order: (is_nodule, diameter_mm, series_uid, center_xyz)."""
    return (candidate.is_nodule, candidate.diameter_mm, candidate.series_uid, candidate.center_xyz)


def _read_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, [values in `columns` order])`` after checking the header."""
    if not path.is_file():
        raise FileNotFoundError(f"expected the LUNA16 CSV file {path}, but it does not exist")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise CsvFormatError(f"{path}: the file is empty; expected a header {','.join(columns)}")
        header = [name.strip() for name in header]
        missing = [name for name in columns if name not in header]
        if missing:
            raise CsvFormatError(
                f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                f"expected a header with {','.join(columns)}, found {','.join(header)}"
            )
        positions = [header.index(name) for name in columns]
        width = len(header)
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != width:
                raise CsvFormatError(
                    f"{path}, line {line_number}: expected {width} values, found {len(row)}"
                )
            yield line_number, [row[position] for position in positions]


def _to_float(text: str, path: Path, line_number: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CsvFormatError(
            f"{path}, line {line_number}, column {column}: {text!r} is not a number"
        ) from None


def read_annotations(path: str | Path) -> dict[str, list[tuple[tuple[float, float, float], float]]]:
    """``annotations.csv`` as ``{series_uid: [(center_xyz, diameter_mm), ...]}`` in file order."""
    path = Path(path)
    annotations: dict[str, list[tuple[tuple[float, float, float], float]]] = defaultdict(list)
    for line_number, (uid, x, y, z, diameter) in _read_rows(path, ANNOTATION_COLUMNS):
        center = (
            _to_float(x, path, line_number, "coordX"),
            _to_float(y, path, line_number, "coordY"),
            _to_float(z, path, line_number, "coordZ"),
        )
        annotations[uid].append((center, _to_float(diameter, path, line_number, "diameter_mm")))
    return dict(annotations)


def matching_diameter(
    center_xyz: tuple[float, float, float],
    annotations: Iterable[tuple[tuple[float, float, float], float]],
) -> float:
    """Diameter of the first annotation whose centre is within diameter/4 on every axis, else 0."""
    for annotation_xyz, diameter_mm in annotations:
        radius = diameter_mm / 4
        if all(abs(c - a) <= radius for c, a in zip(center_xyz, annotation_xyz)):
            return diameter_mm
    return 0.0


def load_candidates(
    annotations_csv: str | Path,
    candidates_csv: str | Path,
    series_uids: set[str] | None = None,
) -> list[Candidate]:
    """Read, join and order the LUNA16 candidate list.

    Args:
        annotations_csv: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``).
        candidates_csv: ``candidates.csv`` or ``candidates_V2.csv``
            (``seriesuid,coordX,coordY,coordZ,class``).
        series_uids: keep only candidates of these series (e.g. the scans on disk); None keeps all.

    Returns:
        The candidates in the reference order (positives first, biggest first).

    Raises:
        FileNotFoundError: a CSV is missing.
        CsvFormatError: a header lacks a column, or a value is not a number / class is not 0 or 1.
    """
    annotations = read_annotations(annotations_csv)
    path = Path(candidates_csv)
    candidates = []
    for line_number, (uid, x, y, z, label) in _read_rows(path, CANDIDATE_COLUMNS):
        if series_uids is not None and uid not in series_uids:
            continue
        if label not in ("0", "1"):
            label = label.strip()
            if label not in ("0", "1"):
                raise CsvFormatError(f"{path}, line {line_number}, column class: {label!r} is not 0 or 1")
        center = (
            _to_float(x, path, line_number, "coordX"),
            _to_float(y, path, line_number, "coordY"),
            _to_float(z, path, line_number, "coordZ"),
        )
        diameter = matching_diameter(center, annotations.get(uid, ()))
        candidates.append(Candidate(uid, center, label == "1", diameter))
    candidates.sort(key=reference_sort_key, reverse=True)
    return candidates
