"""``PointsDataModule``: a points CSV (see ``luna.points.source``), or its phantom, as batches of crops.

python -m luna.fit --config configs/points.yaml --data.points_csv=PATH
"""

from __future__ import annotations

import logging
from pathlib import Path

from luna.data.datamodule import CropDataModule
from luna.data.synthetic import spec_digest
from luna.points.phantom import PointsPhantomSpec, generate_points_phantom
from luna.points.source import POINTS_FILE, PointsCsv

log = logging.getLogger(__name__)


class PointsDataModule(CropDataModule):
    """Crops around the points of a points CSV (any volumes, any number of classes).

    Args:
        points_csv: the CSV (see ``luna.points.source``). None: the phantom below. With
            ``cache_dir`` None, the crop cache goes beside it, in ``luna-cache/``.
        phantom: when ``points_csv`` is None, generate this phantom dataset (NIfTI volumes, three
            classes) into ``<cache_dir>/points-phantom-<digest>/`` once and use it.
        **kwargs: the arguments of ``CropDataModule`` (crop size, intensity window, splits...).
    """

    def __init__(
        self, points_csv: str | Path | None = None, phantom: PointsPhantomSpec | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.phantom = phantom
        folder = f"points-phantom-{spec_digest(phantom)}" if phantom else ""
        self.points_csv, self.generates_phantom = self.input_path(
            points_csv, phantom, f"{folder}/{POINTS_FILE}", "points_csv", cache_beside="luna-cache"
        )

    def describe_inputs(self) -> dict[str, str | None]:
        return {"points_csv": str(self.points_csv.resolve())}

    def prepare_inputs(self) -> None:
        """Generate the phantom when no ``points_csv`` was given and it is not there yet."""
        if self.generates_phantom and not self.points_csv.is_file():
            log.info("generating the phantom points dataset in %s", self.points_csv.parent)
            generate_points_phantom(self.points_csv.parent, self.phantom)

    @property
    def class_names(self) -> list[str]:
        if not self.points_csv.is_file() and self.phantom is not None:
            return list(self.phantom.class_names)  # before the phantom exists: what it will hold
        return super().class_names

    def make_source(self) -> PointsCsv:
        return PointsCsv(self.points_csv)
