"""Running an exported bundle on new volumes, without Lightning and without a crop cache: what
``luna.infer`` and ``luna.infer.load(bundle)(volume, points)`` do.

A classification bundle scores points: crops are cut around each point from the volume in memory
exactly as the crop cache cuts them for training (``luna.detection.pipeline.crops_of``), so its
probabilities are ``luna.fit predict``'s. A segmentation bundle finds candidates in a whole scan;
with a classification bundle beside it, a scan's findings (``luna.detection.pipeline.Detector``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from luna.data.volume import Volume
from luna.detection.pipeline import Stage, classify, crops_of, segment
from luna.inference.bundle import BundleError, BundleInfo, load_torchscript, read_bundle
from luna.segmentation.candidates import Candidates
from luna.training.inputs import CropInputs

log = logging.getLogger(__name__)
SATURATED = 0.25  # a volume whose crops sit at the window's top this often is not the training data's kind


def stage_of_bundle(info: BundleInfo, device: torch.device) -> Stage:
    """A bundle's network as a stage of detection."""
    widths = [width for width, _ in info.views]
    inputs = CropInputs.of(widths, [spacing for _, spacing in info.views], list(info.intensity))
    return Stage(load_torchscript(info, device), inputs, str(info.path), info.settings)


def _volume(volume: str | Path | Volume) -> Volume:
    return volume if isinstance(volume, Volume) else Volume.read(volume, window=None)


class PointClassifier:
    """A classification bundle, ready: ``classifier(volume, points_xyz)`` gives ``[n, classes]``.

    Args:
        info: the bundle (``read_bundle``).
        device: where the network runs.
    """

    @classmethod
    def of(cls, bundle: str | Path, device: str | torch.device = "cpu") -> PointClassifier:
        """The classifier of the bundle at ``bundle`` (checked), on ``device``."""
        return cls(read_bundle(bundle), torch.device(device))

    def __init__(self, info: BundleInfo, device: torch.device) -> None:
        if info.task != "classification":
            raise BundleError(f"bundle {info.path} is a {info.task} model, not a classifier of points")
        self.info, self.device = info, device
        self.stage = stage_of_bundle(info, device)

    def __call__(self, volume: str | Path | Volume, points_xyz: np.ndarray) -> np.ndarray:
        """The class probabilities of crops around ``points_xyz`` (``[n, 3]`` mm) of ``volume`` (a
        file SimpleITK reads, or a ``Volume`` read with ``window=None``).

        Raises:
            ScanReadError: the volume cannot be read; ValueError: a point lies outside it.
        """
        scan = _volume(volume)
        points = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        self.warn_if_foreign(scan, crops_of(scan, points[:64], self.stage))
        return classify(scan, points, self.stage, self.device)

    def warn_if_foreign(self, scan: Volume, crops: list[np.ndarray]) -> None:
        """Warn when a volume's values do not fit the bundle's window (an MRI given to a CT model):
        its crops would be clipped to the window's top, and the probabilities would mean nothing."""
        low, high, scale = self.info.intensity
        values = np.concatenate([crop.ravel() for crop in crops]) if crops else np.empty(0)
        saturated = float((values >= round(high * scale)).mean()) if len(values) else 0.0
        if saturated > SATURATED:
            raw = scan.voxels
            log.warning(
                "%s: %.0f%% of its crop voxels lie at or above the top of the bundle's intensity window "
                "[%g, %g] (its values run from %g to %g): it does not look like the data the model was "
                "trained on, and clipped values give meaningless probabilities",
                scan.name,
                100 * saturated,
                low,
                high,
                float(raw.min()),
                float(raw.max()),
            )


class ScanSegmenter:
    """A segmentation bundle, ready: ``segmenter(volume)`` gives its candidates.

    Args:
        info: the bundle; device: where the network runs; threshold: the voxel threshold (None:
            the bundle's); min_volume_mm3: candidates smaller than this are dropped.
    """

    @classmethod
    def of(cls, bundle: str | Path, device: str | torch.device = "cpu") -> ScanSegmenter:
        """The segmentation of the bundle at ``bundle`` (checked), on ``device``."""
        return cls(read_bundle(bundle), torch.device(device))

    def __init__(
        self,
        info: BundleInfo,
        device: torch.device,
        threshold: float | None = None,
        min_volume_mm3: float = 0.0,
    ) -> None:
        if info.task != "segmentation":
            raise BundleError(f"bundle {info.path} is a {info.task} model, not a segmentation")
        self.info, self.device = info, device
        self.threshold = info.threshold if threshold is None else threshold
        self.min_volume_mm3 = min_volume_mm3
        self.stage = stage_of_bundle(info, device)

    def __call__(self, volume: str | Path | Volume) -> Candidates:
        return segment(_volume(volume), self.stage, self.device, self.threshold, self.min_volume_mm3)


def load(bundle: str | Path, device: str | torch.device | None = None) -> PointClassifier | ScanSegmenter:
    """The model of an exported bundle, checked and ready to run: a classification bundle gives
    ``predictor(volume, points) -> probabilities``, a segmentation bundle ``segmenter(volume) ->
    candidates``.

    Raises:
        BundleError: a missing or altered file (named), or no TorchScript network.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = read_bundle(bundle)
    return PointClassifier(info, device) if info.task == "classification" else ScanSegmenter(info, device)
