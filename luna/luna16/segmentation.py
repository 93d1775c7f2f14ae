"""LUNA16's segmentation task: its scans, with a mask for each nodule of ``annotations.csv``.

Only ``annotations.csv`` is read (the nodules); the candidates are what the segmentation is to
find. The volumes are the scans under ``subset*/``, grouped by series and folded by subset, as
for the candidates, so that a split of one task is the split of the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna.data.table import hash_files
from luna.luna16.annotations import ANNOTATIONS, read_annotations
from luna.luna16.datamodule import Luna16Release
from luna.luna16.phantom import PhantomSpec
from luna.luna16.release import ReleaseScans, subset_number
from luna.segmentation.datamodule import SegmentationDataModule
from luna.segmentation.sources import VolumeSource, VolumeTable


class Luna16Nodules(ReleaseScans, VolumeSource):
    """The scans of a LUNA16 folder and their annotated nodules (centre and diameter in mm).

    Args:
        data_dir: the release's folder.
        annotations_file: the annotations CSV inside it.
    """

    def __init__(self, data_dir: str | Path, annotations_file: str = ANNOTATIONS) -> None:
        super().__init__(data_dir)
        self.annotations_csv = self.data_dir / annotations_file

    def fingerprint(self) -> str:
        if not self.annotations_csv.is_file():
            raise FileNotFoundError(
                f"expected the LUNA16 CSV file {self.annotations_csv}, but it does not exist"
            )
        return hash_files([self.annotations_csv], "luna16-nodules")

    def image_files(self) -> list[Path]:
        return [path for _, path in sorted(self.scans.items())]

    def id_column(self) -> str:
        return "seriesuid"

    def table(self) -> VolumeTable:
        self.fingerprint()  # names a missing CSV
        nodules = read_annotations(self.annotations_csv).by_series()
        uids = sorted(self.scans)
        findings = []
        for uid in uids:
            centers, diameters = nodules.get(uid, (np.empty((0, 3)), np.empty(0)))
            findings.append(np.column_stack([centers, diameters]).reshape(-1, 4))
        return VolumeTable(
            image_ids=uids,
            image_paths=[self.scans[uid] for uid in uids],
            groups=list(uids),
            folds=np.array([subset_number(self.scans[uid]) for uid in uids]),
            mask_paths=[None] * len(uids),
            findings=findings,
        )

    def describe(self) -> str:
        return f"LUNA16 scans of {self.data_dir} with the nodules of {self.annotations_csv.name}"


class Luna16SegmentationDataModule(Luna16Release, SegmentationDataModule):
    """LUNA16's scans and nodule masks as training patches and whole validation volumes
    (``configs/luna16_segment.yaml``).

    Args:
        data_dir: the LUNA16 folder (``subset*/<uid>.mhd``, ``annotations.csv``). None: the
            phantom below. With ``cache_dir`` None, the volume store goes beside it, in
            ``<data_dir>-luna-cache``.
        phantom: when ``data_dir`` is None, generate this phantom LUNA16 release (once) and use it.
        annotations_file: the annotations CSV inside ``data_dir``.
        **kwargs: the arguments of ``SegmentationDataModule`` (spacing, patches, splits, loaders).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        phantom: PhantomSpec | None = None,
        annotations_file: str = ANNOTATIONS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.use_release(data_dir, phantom)
        self.annotations_file = annotations_file

    def make_source(self) -> Luna16Nodules:
        return Luna16Nodules(self.data_dir, self.annotations_file)
