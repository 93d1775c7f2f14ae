"""The LUNA16 DataModules: a LUNA16 folder (or its phantom) as batches of cached crops.

* ``LunaDataModule``: the candidates (nodule or not); validation and test score LUNA16's FROC.
* ``MalignancyDataModule``: the book's chapter 14, benign or malignant nodules.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from luna.data.datamodule import CropDataModule
from luna.data.synthetic import spec_digest
from luna.evaluation.froc import Reference
from luna.luna16.phantom import MARKER, PhantomSpec, generate_phantom
from luna.luna16.scoring import read_reference
from luna.luna16.sources import MALIGNANCY_FILE, Luna16Candidates, Luna16Malignancy

log = logging.getLogger(__name__)


class Luna16Release:
    """A LUNA16 folder, or the phantom generated for it when no folder is given: mixed into the
    LUNA16 DataModules of crops and of volumes, before their base class (it answers
    ``describe_inputs`` and ``prepare_inputs`` for them)."""

    def use_release(self, data_dir: str | Path | None, phantom: PhantomSpec | None) -> None:
        """Take ``data_dir`` (it must exist) or ``phantom``; the cache goes beside the folder."""
        self.phantom = phantom
        self.data_dir, self.generates_phantom = self.input_path(
            data_dir,
            phantom,
            f"phantom-{spec_digest(phantom)}" if phantom else "",
            "data_dir",
            cache_beside=f"{Path(data_dir or '.').name}-luna-cache",
        )
        if not self.generates_phantom and not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"data_dir={self.data_dir}: the LUNA16 folder does not exist (it should hold "
                "subset*/<seriesuid>.mhd and the CSVs)"
            )

    def describe_inputs(self) -> dict[str, str | None]:
        return {"data_dir": str(self.data_dir.resolve())}

    def prepare_inputs(self) -> None:
        """Generate the phantom into its folder when no ``data_dir`` was given and it is not there yet."""
        if self.generates_phantom and not (self.data_dir / MARKER).is_file():
            log.info("generating phantom LUNA16 data (%d scans) in %s", self.phantom.series, self.data_dir)
            generate_phantom(self.data_dir, self.phantom)


class _Luna16DataModule(Luna16Release, CropDataModule):
    """LUNA16's crops: a LUNA16 folder, or its phantom."""

    def __init__(
        self, data_dir: str | Path | None = None, phantom: PhantomSpec | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.use_release(data_dir, phantom)


class LunaDataModule(_Luna16DataModule):
    """LUNA16 candidates (nodule or not) as batches of cached crops; validation and test score
    LUNA16's FROC (``val/cpm``) over the scans they hold, unless ``split_by="row"``.

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

    def __init__(
        self,
        data_dir: str | Path | None = None,
        phantom: PhantomSpec | None = None,
        candidates_file: str = "candidates.csv",
        annotations_file: str = "annotations.csv",
        **kwargs,
    ) -> None:
        super().__init__(data_dir, phantom, **kwargs)
        self.candidates_file, self.annotations_file = candidates_file, annotations_file
        self._references: dict[str, Reference | None] = {}

    def make_source(self) -> Luna16Candidates:
        return Luna16Candidates(self.data_dir, self.candidates_file, self.annotations_file)

    def setup(self, stage: str | None = None) -> None:
        """Open and split the cache; say how many annotated nodules the validation scans hold (the
        FROC counts those, while the split counts candidate rows: a nodule may have several)."""
        opened = self.cache is None
        super().setup(stage)
        reference = self.evaluation_reference("val") if opened else None
        if reference is not None:
            log.info(
                "validation: %d scans with %d annotated nodules (FROC and CPM count these; the %d nodule "
                "crops above are candidate rows, several per nodule at times)",
                len(reference.scans),
                len(reference.nodules.scan),
                int(self.val_dataset.labels.sum()),
            )

    def evaluation_reference(self, stage: str) -> Reference | None:
        """The scans and findings LUNA16's FROC scores a stage against, or None when it means nothing.

        ``val`` evaluates the scans of the validation split, ``test`` (and predict) those of the
        evaluation set. With ``split_by="row"`` the same scans are in training and
        validation, so no FROC is scored.
        """
        if stage not in self._references:
            if self.split_by == "row":
                log.info(
                    "split_by='row' puts scans in both training and validation: CPM would be "
                    "meaningless, so it is not computed"
                )
                self._references[stage] = None
            else:
                dataset = self.val_dataset if stage == "val" else self.eval_dataset
                scans = [self.cache.image_ids[s] for s in np.unique(dataset.images).tolist()]
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

    def __init__(
        self,
        data_dir: str | Path | None = None,
        phantom: PhantomSpec | None = None,
        malignancy_file: str = MALIGNANCY_FILE,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, phantom, **kwargs)
        self.malignancy_file = malignancy_file

    def make_source(self) -> Luna16Malignancy:
        return Luna16Malignancy(self.data_dir, self.malignancy_file)
