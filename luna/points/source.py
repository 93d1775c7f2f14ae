"""Your own 3D data in five minutes: a CSV of points in volumes, as a crop source.

``points.csv`` (``image,coordX,coordY,coordZ,label[,group][,fold]``)::

    image,coordX,coordY,coordZ,label,group
    ct/patient01.nii.gz,-41.2,10.5,-120.0,calcified,patient01
    mr/patient02/,12.0,-3.5,40.25,solid,patient02

* ``image``: a path relative to the CSV's folder to any volume SimpleITK reads (``.nii``,
  ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``) or a folder holding one DICOM series.
* ``coordX, coordY, coordZ``: the point in millimetres, in the volume's physical (patient) frame.
* ``label``: an integer class, or a class name; names are numbered in sorted order, and the
  mapping (``class_names``) is saved with the run and in the crop cache.
* ``group`` (optional): the split group (e.g. the patient), so that no patient is in two sets;
  default: the image. ``fold`` (optional): an integer fold for ``split_by=fold``.

    python -m luna.fit --config configs/points.yaml --data.points_csv=PATH

Every row is checked before anything is cut: the files exist and can be read, and every point
lies inside its volume; errors name the file, the line and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna.data.table import NO_FOLD, CropSource, CropTable, hash_files
from luna.data.volume import Geometry, ScanReadError
from luna.io.csvfile import CsvFormatError, read_columns

REQUIRED = ("image", "coordX", "coordY", "coordZ", "label")
OPTIONAL = ("group", "fold")
POINTS_FILE = "points.csv"


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [name.strip() for name in handle.readline().rstrip("\r\n").split(",")]


def _class_names(labels: list[str]) -> list[str]:
    """Integer labels ``0..K`` name themselves; anything else is a name, numbered in sorted order."""
    if all(label.lstrip("-").isdigit() for label in labels):
        values = sorted({int(label) for label in labels})
        if values[0] < 0:
            raise ValueError(f"integer labels must be 0 or more, found {values[0]}")
        return [str(k) for k in range(values[-1] + 1)]
    return sorted(set(labels))


class PointsCsv(CropSource):
    """Rows of a points CSV (see the module's docstring).

    Args:
        points_csv: the CSV; image paths are relative to its folder.
    """

    def __init__(self, points_csv: str | Path) -> None:
        self.path = Path(points_csv)
        self._columns = None

    def _read(self):
        if self._columns is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"expected the points CSV {self.path}, but it does not exist")
            header = _header(self.path)
            unknown = [name for name in header if name not in REQUIRED + OPTIONAL]
            if unknown:
                raise CsvFormatError(
                    f"{self.path}, line 1: unknown column(s) {', '.join(unknown)}; the columns are "
                    f"{','.join(REQUIRED)} and optionally {','.join(OPTIONAL)}"
                )
            self._columns = read_columns(
                self.path, REQUIRED + tuple(n for n in OPTIONAL if n in header), "points CSV"
            )
        return self._columns

    def class_names(self) -> list[str]:
        columns = self._read()
        labels = columns.text("label")
        if not labels:
            raise CsvFormatError(f"{self.path}: no rows; expected {','.join(REQUIRED)} rows after the header")
        try:
            names = _class_names(labels)
        except ValueError as error:
            raise CsvFormatError(f"{self.path}, column label: {error}") from None
        if len(set(labels)) < 2:
            raise CsvFormatError(
                f"{self.path}, column label: every row has the label {labels[0]!r}; a classifier "
                "needs at least two classes"
            )
        return names

    def image_files(self) -> list[Path]:
        return sorted({(self.path.parent / image).resolve() for image in self._read().text("image")})

    def fingerprint(self) -> str:
        return hash_files([self.path], "points")

    def table(self) -> CropTable:
        columns = self._read()
        names = self.class_names()
        number = {name: k for k, name in enumerate(names)}
        images = columns.text("image")
        image_ids = sorted(set(images))
        image_of = {image_id: k for k, image_id in enumerate(image_ids)}
        image = np.array([image_of[name] for name in images], dtype=np.int64)
        centers = columns.xyz()
        lines = columns.line_numbers
        first_line = {}
        for line, name in zip(lines, images, strict=True):
            first_line.setdefault(name, line)
        paths = [self.path.parent / image_id for image_id in image_ids]
        for k, image_path in enumerate(paths):
            self._check_image(
                image_path, first_line[image_ids[k]], centers[image == k], np.asarray(lines)[image == k]
            )
        groups_of_rows = columns.text("group") if "group" in columns.columns else images
        folds_of_rows = (
            columns.numbers("fold") if "fold" in columns.columns else np.full(len(images), NO_FOLD)
        )
        groups, folds = [""] * len(image_ids), np.full(len(image_ids), NO_FOLD, dtype=np.int64)
        seen: dict[int, int] = {}
        for row, (k, group, fold) in enumerate(
            zip(image.tolist(), groups_of_rows, folds_of_rows.tolist(), strict=True)
        ):
            if k in seen and (groups[k], folds[k]) != (group, int(fold)):
                raise CsvFormatError(
                    f"{self.path}, line {lines[row]}, column group/fold: image {images[row]} has "
                    f"group {groups[k]!r} and fold {folds[k]} on line {lines[seen[k]]}"
                )
            seen.setdefault(k, row)
            groups[k], folds[k] = group, int(fold)
        label = np.array(
            [number[text] if text in number else int(text) for text in columns.text("label")], dtype=np.int64
        )
        return CropTable(image_ids, paths, groups, folds, image, centers, label, names)

    def _check_image(
        self, image_path: Path, line: int, centers_xyz: np.ndarray, rows_lines: np.ndarray
    ) -> None:
        """The image exists, SimpleITK reads its header, and every point of it lies inside it."""
        where = f"{self.path}, line {line}, column image"
        if not image_path.exists():
            raise CsvFormatError(f"{where}: {image_path} does not exist")
        try:
            geometry = Geometry.read(image_path)
        except (RuntimeError, ScanReadError) as error:
            detail = next(
                (text for text in reversed(str(error).strip().splitlines()) if text.strip()), "unreadable"
            )
            raise CsvFormatError(f"{where}: {image_path} cannot be read as a volume: {detail}") from None
        irc, inside = geometry.inside(centers_xyz)
        if not inside.all():
            k = int((~inside).argmax())
            raise CsvFormatError(
                f"{self.path}, line {rows_lines[k]}, columns coordX,coordY,coordZ: "
                f"{tuple(centers_xyz[k].tolist())} mm lies outside {image_path} "
                f"(voxel {tuple(irc[k].tolist())} of a {geometry.shape_irc} volume)"
            )

    def describe(self) -> str:
        return f"points of {self.path}"
