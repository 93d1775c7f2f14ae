"""What a DataModule tells the rest of luna: the one contract between data and model.

The module, the metrics and the callbacks (predictions, figures, console) never look inside a
DataModule; they ask these questions, and only these. ``CropDataModule`` answers them for every
dataset built on it; a DataModule of your own that answers them works with all of luna.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from luna.evaluation.froc import Reference


@runtime_checkable
class CropData(Protocol):
    """The questions the model side asks of its data."""

    @property
    def class_names(self) -> list[str]:
        """One name per class, in label order."""

    @property
    def input_widths_irc(self) -> list[list[int]]:
        """The crop the network sees of each view of a candidate."""

    @property
    def input_spacings_mm(self) -> list[list[float] | None]:
        """Each view's voxel size in millimetres (None: the scan's own voxels)."""

    @property
    def input_intensity(self) -> list[float]:
        """``[window low, window high, scale]``: crops hold ``round(clip(value, window) * scale)``."""

    @property
    def image_id_column(self) -> str:
        """What an image id is called in a predictions file (LUNA16: ``seriesuid``)."""

    @property
    def image_ids(self) -> list[str]:
        """The id of each image number that batches carry in ``batch["image"]`` (LUNA16: series uids)."""

    def identify(self, indices: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Image ids and centres (mm ``[n, 3]``) of the rows at cache ``indices`` (``batch["index"]``)."""

    def class_frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Class frequencies of the training split as it is (natural) and as epochs sample it."""

    def evaluation_reference(self, stage: str) -> Reference | None:
        """What a FROC analysis scores ``stage`` (``val`` or ``test``/``predict``) against; None: no FROC."""

    def describe_inputs(self) -> dict[str, str | None]:
        """Where the data came from, recorded beside predictions (e.g. ``{"data_dir": ...}``)."""


def crop_data(trainer) -> CropData:
    """The trainer's DataModule, which must follow the contract.

    Raises:
        TypeError: the trainer has no DataModule, or one that does not answer ``CropData``.
    """
    datamodule = trainer.datamodule
    if not isinstance(datamodule, CropData):
        raise TypeError(
            f"luna's model, metrics and callbacks need a DataModule that follows luna.data.contract.CropData "
            f"(a CropDataModule subclass does); got {type(datamodule).__name__}"
        )
    return datamodule
