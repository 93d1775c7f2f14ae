"""Your own segmentation data: a CSV of (image, mask) volume pairs, as a volume source.

``pairs.csv`` (``image,mask[,group][,fold]``), the image/label convention of MONAI and nnU-Net::

    image,mask,group
    ct/patient01.nii.gz,labels/patient01.nii.gz,patient01
    mr/patient02/,labels/patient02.nrrd,patient02

* ``image``: a path relative to the CSV's folder to any volume SimpleITK reads, or a folder with
  one DICOM series; ``mask``: its label volume (nonzero is foreground) on any grid in the same
  physical frame (it is resampled onto the image's stored grid, nearest neighbour).
* ``group`` (optional): the split group (e.g. the patient); default: the image. ``fold``
  (optional): an integer fold for ``split_by=fold``.

    python -m luna.fit --config configs/segment_pairs.yaml --data.pairs_csv=PATH

The findings whose recall is measured are the mask's connected components. Every row is checked
before anything is stored: both files exist and SimpleITK reads them; errors name the file, the
line and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna.data.synthetic import spec_digest
from luna.data.table import NO_FOLD, hash_files
from luna.data.volume import Geometry
from luna.io.csvfile import CsvFormatError, read_columns
from luna.points.phantom import PointsPhantomSpec, generate_points_phantom
from luna.segmentation.datamodule import SegmentationDataModule
from luna.segmentation.sources import VolumeSource, VolumeTable

PAIRS_FILE = "pairs.csv"


class MaskPairsCsv(VolumeSource):
    """The rows of a pairs CSV (see the module's docstring).

    Args:
        pairs_csv: the CSV; paths are relative to its folder.
    """

    def __init__(self, pairs_csv: str | Path) -> None:
        self.path = Path(pairs_csv)
        self._columns = None

    def _read(self):
        if self._columns is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"expected the pairs CSV {self.path}, but it does not exist")
            with self.path.open(newline="") as handle:
                header = [
                    name.strip() for name in handle.readline().lstrip("\ufeff").rstrip("\r\n").split(",")
                ]
            optional = tuple(name for name in ("group", "fold") if name in header)
            self._columns = read_columns(self.path, ("image", "mask", *optional), "pairs CSV")
            if not len(self._columns):
                raise CsvFormatError(f"{self.path}: no rows; expected image,mask rows after the header")
        return self._columns

    def fingerprint(self) -> str:
        return hash_files([self.path], "mask-pairs")

    def image_files(self) -> list[Path]:
        columns = self._read()
        return [
            (self.path.parent / name).resolve() for name in [*columns.text("image"), *columns.text("mask")]
        ]

    def table(self) -> VolumeTable:
        columns = self._read()
        images, masks = columns.text("image"), columns.text("mask")
        for line, image, mask in zip(columns.line_numbers, images, masks, strict=True):
            for column, name in (("image", image), ("mask", mask)):
                self._check(self.path.parent / name, line, column)
        if len(set(images)) != len(images):
            twice = next(name for name in images if images.count(name) > 1)
            raise CsvFormatError(f"{self.path}: image {twice} is listed twice")
        groups = columns.text("group") if "group" in columns.columns else list(images)
        folds = (
            columns.numbers("fold").astype(np.int64)
            if "fold" in columns.columns
            else np.full(len(images), NO_FOLD)
        )
        return VolumeTable(
            image_ids=list(images),
            image_paths=[self.path.parent / name for name in images],
            groups=groups,
            folds=folds,
            mask_paths=[self.path.parent / name for name in masks],
            findings=[np.empty((0, 4)) for _ in images],
        )

    def _check(self, path: Path, line: int, column: str) -> None:
        where = f"{self.path}, line {line}, column {column}"
        if not path.exists():
            raise CsvFormatError(f"{where}: {path} does not exist")
        try:
            Geometry.read(path)
        except RuntimeError as error:
            raise CsvFormatError(
                f"{where}: {path} cannot be read ({str(error).strip().splitlines()[-1]})"
            ) from None

    def describe(self) -> str:
        return f"image and mask pairs of {self.path}"


class MaskPairsDataModule(SegmentationDataModule):
    """Your own volumes and their masks (a pairs CSV) as training patches and whole validation
    volumes (``configs/segment_pairs.yaml``).

    Args:
        pairs_csv: the CSV. None: the phantom below (NIfTI volumes of three kinds of finding, each
            with its mask). With ``cache_dir`` None, the volume store goes beside the CSV in
            ``luna-cache/``.
        phantom: when ``pairs_csv`` is None, generate this phantom (once) and use its pairs.
        **kwargs: the arguments of ``SegmentationDataModule`` (spacing, patches, splits, loaders).
    """

    def __init__(
        self, pairs_csv: str | Path | None = None, phantom: PointsPhantomSpec | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.phantom = phantom
        folder = f"points-phantom-{spec_digest(phantom)}" if phantom else ""
        self.pairs_csv, self.generates_phantom = self.input_path(
            pairs_csv, phantom, f"{folder}/{PAIRS_FILE}", "pairs_csv", cache_beside="luna-cache"
        )

    def describe_inputs(self) -> dict[str, str | None]:
        return {"pairs_csv": str(self.pairs_csv.resolve())}

    def prepare_inputs(self) -> None:
        if self.generates_phantom and not self.pairs_csv.is_file():
            generate_points_phantom(self.pairs_csv.parent, self.phantom)

    def make_source(self) -> MaskPairsCsv:
        return MaskPairsCsv(self.pairs_csv)
