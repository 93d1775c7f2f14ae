"""LUNA16 as luna reads it: the release's folder layout, its two tasks as sources, their DataModules.

* ``Luna16Candidates``: every row of ``candidates.csv`` (or ``candidates_V2.csv``) joined to
  ``annotations.csv`` and ordered as the book does; label 1 = nodule. The default task.
* ``Luna16Malignancy``: the annotated nodules of ``annotations_with_malignancy.csv`` (the book's
  chapter 14); label 1 = malignant.

The images are the scans under ``subset*/`` (``seg-lungs-LUNA16/`` holds lung masks with the same
names and is not read); their split groups are the series uids and their folds the subset numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from luna.csvfile import CsvFormatError, read_columns
from luna.data.candidates import Candidate, load_candidate_arrays
from luna.data.datamodule import CropDataModule
from luna.data.phantom import MARKER, PhantomSpec, generate_phantom, spec_digest
from luna.data.release import find_scans, subset_number
from luna.data.table import CropSource, CropTable, hash_files
from luna.evaluation.files import read_reference
from luna.evaluation.froc import Reference

log = logging.getLogger(__name__)

CANDIDATE_CLASSES = ["non-nodule", "nodule"]
MALIGNANCY_CLASSES = ["benign", "malignant"]
MALIGNANCY_FILE = "annotations_with_malignancy.csv"


class _Luna16Source(CropSource):
    """What both LUNA16 tasks share: the scans on disk are the images, one group per series."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._scans: dict[str, Path] | None = None

    @property
    def scans(self) -> dict[str, Path]:
        if self._scans is None:
            self._scans = find_scans(self.data_dir)
            if not self._scans:
                raise FileNotFoundError(f"no scans found: expected {self.data_dir}/subset*/<seriesuid>.mhd files")
        return self._scans

    def image_files(self) -> list[Path]:
        return [path for _, path in sorted(self.scans.items())]

    def _table(self, series_uids: list[str], series: np.ndarray, center_xyz: np.ndarray, label: np.ndarray,
               class_names: list[str], extra: dict[str, np.ndarray]) -> CropTable:
        """A table whose images are ``series_uids`` (rows of series not on disk point at a missing file)."""
        paths = [self.scans.get(uid, self.data_dir / "not-on-disk" / f"{uid}.mhd") for uid in series_uids]
        return CropTable(
            image_ids=list(series_uids), image_paths=paths, groups=list(series_uids),
            folds=np.array([subset_number(path) if uid in self.scans else -1 for uid, path in zip(series_uids, paths)]),
            image=series, center_xyz=center_xyz, label=label, class_names=class_names, extra=extra,
        )


class Luna16Candidates(_Luna16Source):
    """LUNA16 candidates: the rows of the candidates CSV, joined and ordered as the book does.

    Args:
        data_dir: the release's folder.
        candidates_file: ``candidates.csv`` (V1) or ``candidates_V2.csv``.
        annotations_file: the annotations CSV (the join's diameters).
    """

    def __init__(self, data_dir: str | Path, candidates_file: str = "candidates.csv",
                 annotations_file: str = "annotations.csv") -> None:
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
        return self._table(arrays.series_uids, arrays.series, arrays.center_xyz, arrays.is_nodule.astype(np.int64),
                           self.class_names(), {"diameter_mm": arrays.diameter_mm})

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
                f"expected {self.malignancy_csv}, the nodules with their malignancy (the book's chapter 14 file "
                "annotations_with_malignancy.csv, columns seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool), "
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
        for line, text in zip(columns.line_numbers, columns.text("mal_bool")):
            value = {"true": 1, "1": 1, "false": 0, "0": 0}.get(text.lower())
            if value is None:
                raise CsvFormatError(f"{self.malignancy_csv}, line {line}, column mal_bool: {text!r} is not True/False")
            label.append(value)
        uids = columns.text("seriesuid")
        series_uids = sorted(set(uids))
        number = {uid: k for k, uid in enumerate(series_uids)}
        return self._table(series_uids, np.array([number[uid] for uid in uids], dtype=np.int64), columns.xyz(),
                           np.array(label, dtype=np.int64), self.class_names(),
                           {"diameter_mm": columns.numbers("diameter_mm")})

    def describe(self) -> str:
        return f"LUNA16 nodule malignancy of {self.malignancy_csv}"


class _Luna16DataModule(CropDataModule):
    """A LUNA16 folder, or the phantom generated for it when no folder is given."""

    def __init__(self, data_dir: str | Path | None = None, phantom: PhantomSpec | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.phantom = phantom
        self.data_dir, self.generates_phantom = self.input_path(
            data_dir, phantom, f"phantom-{spec_digest(phantom)}" if phantom else "", "data_dir")
        if not self.generates_phantom:
            if not self.data_dir.is_dir():
                raise FileNotFoundError(f"data_dir={self.data_dir}: the LUNA16 folder does not exist (it should hold "
                                        "subset*/<seriesuid>.mhd and the CSVs)")
            if self.cache_dir is None:  # beside the data: on its (large) disk, out of the code checkout
                self.cache_dir = self.data_dir.parent / f"{self.data_dir.name}-luna-cache"

    def prepare_inputs(self) -> None:
        """Generate the phantom into its folder when no ``data_dir`` was given and it is not there yet."""
        if self.generates_phantom and not (self.data_dir / MARKER).is_file():
            log.info("generating phantom LUNA16 data (%d scans) in %s", self.phantom.series, self.data_dir)
            generate_phantom(self.data_dir, self.phantom)


class LunaDataModule(_Luna16DataModule):
    """LUNA16 candidates (nodule or not) as batches of cached crops; validation and test score
    LUNA16's FROC (``val/cpm``) over the scans they hold, unless ``split_by="candidate"``.

    Args:
        data_dir: the LUNA16 folder (``subset*/<uid>.mhd``, ``annotations.csv``, the candidates
            CSV, ``annotations_excluded.csv`` for the FROC). None: the phantom below. A folder
            that does not exist is an error: phantom data is never a stand-in for a mistyped path.
            With ``cache_dir`` None, the crop cache goes beside it, in ``<data_dir>-luna-cache``.
        phantom: when ``data_dir`` is None, generate this phantom LUNA16 release into
            ``<cache_dir>/phantom-<digest>/`` (once) and use it.
        candidates_file: ``candidates.csv`` (V1) or ``candidates_V2.csv``.
        annotations_file: the annotations CSV inside ``data_dir``.
        **kwargs: the arguments of ``CropDataModule`` (cache, splits, sampling, loaders).
    """

    def __init__(self, data_dir: str | Path | None = None, phantom: PhantomSpec | None = None,
                 candidates_file: str = "candidates.csv", annotations_file: str = "annotations.csv", **kwargs) -> None:
        super().__init__(data_dir, phantom, **kwargs)
        self.candidates_file, self.annotations_file = candidates_file, annotations_file
        self._references: dict[str, Reference | None] = {}

    def make_source(self) -> Luna16Candidates:
        return Luna16Candidates(self.data_dir, self.candidates_file, self.annotations_file)

    def candidate(self, index: int) -> Candidate:
        """The candidate behind a batch's ``index`` entry, as loaded from the CSVs."""
        cache = self.cache
        return Candidate(cache.image_ids[int(cache.image_of[index])], tuple(np.asarray(cache.center_xyz[index]).tolist()),
                         bool(cache.labels[index]), float(cache.column("diameter_mm")[index]))

    def froc_reference(self, stage: str) -> Reference | None:
        """The scans and findings LUNA16's FROC scores a stage against, or None when it means nothing.

        ``val`` evaluates the scans of the validation split, ``test`` (and predict) those of the
        evaluation set. With ``split_by="candidate"`` the same scans are in training and
        validation, so no FROC is scored.
        """
        if stage not in self._references:
            if self.split_by == "candidate":
                log.info("split_by='candidate' puts scans in both training and validation: CPM would be "
                         "meaningless, so it is not computed")
                self._references[stage] = None
            else:
                dataset = self.val_dataset if stage == "val" else self.eval_dataset
                scans = [self.cache.image_ids[s] for s in np.unique(dataset.series).tolist()]
                self._references[stage] = read_reference(self.data_dir, scans, self.annotations_file)
        return self._references[stage]


class MalignancyDataModule(_Luna16DataModule):
    """The book's chapter 14: benign (0) or malignant (1) annotated nodules, as batches of crops.

    Args:
        data_dir: the LUNA16 folder with ``annotations_with_malignancy.csv``. None: the phantom.
        phantom: when ``data_dir`` is None, generate and use this phantom (it writes the file).
        malignancy_file: the malignancy CSV inside ``data_dir``.
        **kwargs: the arguments of ``CropDataModule``.
    """

    def __init__(self, data_dir: str | Path | None = None, phantom: PhantomSpec | None = None,
                 malignancy_file: str = MALIGNANCY_FILE, **kwargs) -> None:
        super().__init__(data_dir, phantom, **kwargs)
        self.malignancy_file = malignancy_file

    def make_source(self) -> Luna16Malignancy:
        return Luna16Malignancy(self.data_dir, self.malignancy_file)
