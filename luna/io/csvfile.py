"""Reading columns of a CSV file, with errors that name the file, the line and the column.

Every table luna reads (LUNA16's annotations and candidates, a submission of predictions, a
points CSV of another dataset) is user input. A wrong header, a short row, a word where a number
belongs or a NaN must stop the run with the place to fix, not turn into a silent zero or a crash
deep inside numpy.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

XYZ_COLUMNS = ("coordX", "coordY", "coordZ")
# a predictions CSV: the image id (LUNA16's submission: seriesuid), the centre, one column per probability
PROBABILITY_COLUMN = "probability"


def probability_columns(class_names: list[str]) -> list[str]:
    """``probability`` for two classes (P(class 1), LUNA16's column), else ``probability_<class>`` each."""
    return (
        [PROBABILITY_COLUMN]
        if len(class_names) == 2
        else [f"{PROBABILITY_COLUMN}_{name}" for name in class_names]
    )


class CsvFormatError(ValueError):
    """A CSV file that cannot be used; the message names the file, the line and the column."""


@dataclass(frozen=True)
class CsvColumns:
    """The wanted columns of a CSV file as text, with each row's line number in the file.

    Attributes:
        path: the file.
        line_numbers: for each row, its line in the file (the header is line 1).
        columns: column name -> the values of that column, as written.
    """

    path: Path
    line_numbers: list[int]
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.line_numbers)

    def text(self, column: str) -> list[str]:
        """A column's values with surrounding spaces removed."""
        return [value.strip() for value in self.columns[column]]

    def numbers(self, column: str, finite: bool = True) -> np.ndarray:
        """A column as float64.

        Raises:
            CsvFormatError: a value is not a number, or (``finite``) is NaN or infinite, naming
                its line and column.
        """
        values = self.columns[column]
        try:
            numbers = np.asarray(values, dtype=np.float64) if values else np.empty(0)
        except ValueError:
            for line_number, text in zip(self.line_numbers, values, strict=True):
                try:
                    float(text)
                except ValueError:
                    raise CsvFormatError(
                        f"{self.path}, line {line_number}, column {column}: {text!r} is not a number"
                    ) from None
            raise
        if finite and not np.isfinite(numbers).all():
            row = int(np.flatnonzero(~np.isfinite(numbers))[0])
            raise CsvFormatError(
                f"{self.path}, line {self.line_numbers[row]}, column {column}: {values[row].strip()!r} "
                "is not a finite number"
            )
        return numbers

    def xyz(self) -> np.ndarray:
        """The ``coordX, coordY, coordZ`` columns as finite millimetres ``[n, 3]``."""
        return np.stack([self.numbers(name) for name in XYZ_COLUMNS], axis=1).reshape(-1, 3)


def read_columns(path: str | Path, columns: Sequence[str], description: str = "CSV file") -> CsvColumns:
    """Read ``columns`` (found by header name, in any order) after checking the header and every row's width.

    The file is UTF-8 text (a byte-order mark, as spreadsheet programs write, is ignored); line
    ends may be LF or CRLF; blank lines are skipped; extra columns are allowed and ignored.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says it was expected as ``description``).
        CsvFormatError: the file is empty, not UTF-8 text, holds a malformed or oversized field,
            lacks a column (or names one twice), or a row has the wrong number of values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected the {description} {path}, but it does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CsvFormatError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
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
        twice = sorted({name for name in columns if header.count(name) > 1})
        if twice:
            raise CsvFormatError(
                f"{path}, line 1: column(s) {', '.join(twice)} appear more than once in the header"
            )
        rows = []
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise CsvFormatError(f"{path}, line {reader.line_num}: {error}") from None
    width = len(header)
    line_numbers = [number for number, row in rows if row]
    rows = [row for _, row in rows if row]
    for line_number, row in zip(line_numbers, rows, strict=True):
        if len(row) != width:
            raise CsvFormatError(f"{path}, line {line_number}: expected {width} values, found {len(row)}")
    by_position = list(zip(*rows, strict=True)) if rows else [()] * width
    return CsvColumns(path, line_numbers, {name: list(by_position[header.index(name)]) for name in columns})
