"""LUNA16's two tasks as crop sources: the rows of its CSVs as luna's generic ``CropTable``.

* ``Luna16Candidates``: every row of ``candidates.csv`` (or ``candidates_V2.csv``) joined to
  ``annotations.csv`` and ordered as the book does; label 1 = nodule. The default task.
* ``Luna16Malignancy``: the annotated nodules of ``annotations_with_malignancy.csv`` (the book's
  chapter 14); label 1 = malignant.

The images are the scans under ``subset*/`` (``seg-lungs-LUNA16/`` holds lung masks with the same
names and is not read); their split groups are the series uids and their folds the subset numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna.data.table import CropSource, CropTable, hash_files
from luna.io.csvfile import CsvFormatError, read_columns
from luna.luna16.candidates import load_candidate_arrays
from luna.luna16.phantom import MARKER as PHANTOM_MARKER
from luna.luna16.release import ReleaseScans, subset_number

CANDIDATE_CLASSES = ["non-nodule", "nodule"]
MALIGNANCY_CLASSES = ["benign", "malignant"]
MALIGNANCY_FILE = "annotations_with_malignancy.csv"


class _Luna16Source(ReleaseScans, CropSource):
    """What both LUNA16 tasks share: the scans on disk are the images, one group per series."""

    def image_files(self) -> list[Path]:
        return [path for _, path in sorted(self.scans.items())]

    def id_column(self) -> str:
        return "seriesuid"

    def missing_images_expected(self) -> bool:
        return (self.data_dir / PHANTOM_MARKER).is_file()  # the phantom lists a few series it never wrote

    def _table(
        self,
        series_uids: list[str],
        series: np.ndarray,
        center_xyz: np.ndarray,
        label: np.ndarray,
        class_names: list[str],
        extra: dict[str, np.ndarray],
    ) -> CropTable:
        """A table whose images are ``series_uids`` (rows of series not on disk point at a missing file)."""
        paths = [self.scans.get(uid, self.data_dir / "not-on-disk" / f"{uid}.mhd") for uid in series_uids]
        return CropTable(
            image_ids=list(series_uids),
            image_paths=paths,
            groups=list(series_uids),
            folds=np.array(
                [
                    subset_number(path) if uid in self.scans else -1
                    for uid, path in zip(series_uids, paths, strict=True)
                ]
            ),
            image=series,
            center_xyz=center_xyz,
            label=label,
            class_names=class_names,
            extra=extra,
        )


class Luna16Candidates(_Luna16Source):
    """LUNA16 candidates: the rows of the candidates CSV, joined and ordered as the book does.

    Args:
        data_dir: the release's folder.
        candidates_file: ``candidates.csv`` (V1) or ``candidates_V2.csv``.
        annotations_file: the annotations CSV (the join's diameters).
    """

    def __init__(
        self,
        data_dir: str | Path,
        candidates_file: str = "candidates.csv",
        annotations_file: str = "annotations.csv",
    ) -> None:
        super().__init__(data_dir)
        self.candidates_csv = self.data_dir / candidates_file
        self.annotations_csv = self.data_dir / annotations_file

    def _check_files(self) -> None:
        if not self.scans:  # a missing folder is named before a missing CSV
            raise FileNotFoundError(f"no scans under {self.data_dir}")
        for path in (self.annotations_csv, self.candidates_csv):
            if not path.is_file():
                raise FileNotFoundError(f"expected the LUNA16 CSV file {path}, but it does not exist")

    def fingerprint(self) -> str:
        self._check_files()
        return hash_files([self.annotations_csv, self.candidates_csv], "luna16-candidates")

    def class_names(self) -> list[str]:
        return list(CANDIDATE_CLASSES)

    def table(self) -> CropTable:
        self._check_files()
        arrays = load_candidate_arrays(self.annotations_csv, self.candidates_csv)
        return self._table(
            arrays.series_uids,
            arrays.series,
            arrays.center_xyz,
            arrays.is_nodule.astype(np.int64),
            self.class_names(),
            {"diameter_mm": arrays.diameter_mm},
        )

    def describe(self) -> str:
        return f"LUNA16 candidates of {self.candidates_csv}"


class Luna16Malignancy(_Luna16Source):
    """The book's chapter 14 task: each annotated nodule of ``annotations_with_malignancy.csv``,
    label 1 when ``mal_bool`` says malignant, in file order.

    Args:
        data_dir: the release's folder (with the book's ``annotations_with_malignancy.csv``).
        malignancy_file: the CSV (``seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool,...``).
    """

    COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "mal_bool")

    def __init__(self, data_dir: str | Path, malignancy_file: str = MALIGNANCY_FILE) -> None:
        super().__init__(data_dir)
        self.malignancy_csv = self.data_dir / malignancy_file

    def _check_file(self) -> None:
        if not self.malignancy_csv.is_file():
            raise FileNotFoundError(
                f"expected {self.malignancy_csv}, the nodules with their malignancy (the book's chapter 14 "
                "file "
                "annotations_with_malignancy.csv, columns "
                "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool), "
                "but it does not exist"
            )

    def fingerprint(self) -> str:
        self._check_file()
        return hash_files([self.malignancy_csv], "luna16-malignancy")

    def class_names(self) -> list[str]:
        return list(MALIGNANCY_CLASSES)

    def table(self) -> CropTable:
        self._check_file()
        columns = read_columns(self.malignancy_csv, self.COLUMNS, "malignancy CSV")
        label = []
        for line, text in zip(columns.line_numbers, columns.text("mal_bool"), strict=True):
            value = {"true": 1, "1": 1, "false": 0, "0": 0}.get(text.lower())
            if value is None:
                raise CsvFormatError(
                    f"{self.malignancy_csv}, line {line}, column mal_bool: {text!r} is not True/False"
                )
            label.append(value)
        uids = columns.text("seriesuid")
        series_uids = sorted(set(uids))
        number = {uid: k for k, uid in enumerate(series_uids)}
        return self._table(
            series_uids,
            np.array([number[uid] for uid in uids], dtype=np.int64),
            columns.xyz(),
            np.array(label, dtype=np.int64),
            self.class_names(),
            {"diameter_mm": columns.numbers("diameter_mm")},
        )

    def describe(self) -> str:
        return f"LUNA16 nodule malignancy of {self.malignancy_csv}"
