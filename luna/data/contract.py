"""What a DataModule tells the rest of luna: the one contract between data and model.

The modules, the metrics and the callbacks (predictions, figures, console) never look inside a
DataModule; they ask these questions, and only these. ``ImageData`` is what every task's data
answers (the classifier's crops and the segmentation's volumes alike): the classes, the network's
input, the images and where they came from. ``CropData`` adds what the classifier asks of its
crops. ``CropDataModule`` and ``SegmentationDataModule`` answer them for every dataset built on
them; a DataModule of your own that answers them works with all of luna.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from luna.data.dataset import CropBatch
from luna.evaluation.froc import Reference


@runtime_checkable
class ImageData(Protocol):
    """The questions every model and callback asks of its data."""

    @property
    def class_names(self) -> list[str]:
        """One name per class, in label order."""

    @property
    def input_widths_irc(self) -> list[list[int]]:
        """The crop (or window) the network sees of each view."""

    @property
    def input_spacings_mm(self) -> list[list[float] | None]:
        """Each view's voxel size in millimetres (None: the scan's own voxels)."""

    @property
    def input_intensity(self) -> list[float]:
        """``[window low, window high, scale]``: stored values are ``round(clip(value, window) * scale)``."""

    @property
    def image_id_column(self) -> str:
        """What an image id is called in a predictions file (LUNA16: ``seriesuid``)."""

    @property
    def image_ids(self) -> list[str]:
        """The id of each image number that batches and predictions carry (LUNA16: series uids)."""

    def describe_inputs(self) -> dict[str, str | None]:
        """Where the data came from, recorded beside predictions (e.g. ``{"data_dir": ...}``)."""


@runtime_checkable
class CropData(ImageData, Protocol):
    """What the classifier asks besides: its crops' candidates, classes and FROC reference."""

    def identify(self, indices: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Image ids and centres (mm ``[n, 3]``) of the rows at cache ``indices`` (``batch["index"]``)."""

    def crops_at(self, indices: np.ndarray) -> CropBatch:
        """The crops at cache ``indices`` as evaluation serves them, collated (every view)."""

    def class_frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Class frequencies of the training split as it is (natural) and as epochs sample it."""

    def evaluation_reference(self, stage: str) -> Reference | None:
        """What a FROC analysis scores ``stage`` (``val`` or ``test``/``predict``) against; None: no FROC."""


def image_data(trainer) -> ImageData:
    """The trainer's DataModule, which must follow ``ImageData``.

    Raises:
        TypeError: the trainer has no DataModule, or one that does not answer ``ImageData``.
    """
    datamodule = trainer.datamodule
    if not isinstance(datamodule, ImageData):
        raise TypeError(
            f"luna's models and callbacks need a DataModule that follows luna.data.contract.ImageData "
            f"(CropDataModule and SegmentationDataModule do); got {type(datamodule).__name__}"
        )
    return datamodule


def crop_data(trainer) -> CropData:
    """The trainer's DataModule, which must follow ``CropData``.

    Raises:
        TypeError: the trainer has no DataModule, or one that does not answer ``CropData``.
    """
    datamodule = trainer.datamodule
    if not isinstance(datamodule, CropData):
        raise TypeError(
            f"luna's classifier and its callbacks need a DataModule that follows "
            f"luna.data.contract.CropData (a CropDataModule subclass does); got {type(datamodule).__name__}"
        )
    return datamodule
