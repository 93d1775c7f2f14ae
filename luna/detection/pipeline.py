"""From a CT to its findings (the book's chapter 14, ``nodule_analysis.py``): segment the scan,
group the segmentation into candidates, classify each candidate, and grade it when a malignancy
classifier is given.

One scan is in memory at a time. Each stage prepares the scan as it was prepared for its training:
the segmentation sees the scan resampled as its volume store kept it (``luna.segmentation.grids``),
the classifier sees crops cut with its own crop settings (native or in millimetres, every view),
cut in memory as the crop cache would have cut them (``luna.data.cutting``): no cache is written.
The stages are networks with what they take (``Stage``): from checkpoints for ``luna.detect``
(``luna.detection.networks``), from exported bundles for ``luna.infer`` (``luna.inference``), so
that both run the same steps. Nothing here imports Lightning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from luna.data.crops import View
from luna.data.cutting import cut_crops
from luna.data.volume import Geometry, Volume, stored_values
from luna.segmentation.candidates import Candidates, group_components
from luna.segmentation.grids import resample, resampled_grid
from luna.segmentation.inference import normalised, probability_map
from luna.training.inputs import CropInputs

log = logging.getLogger(__name__)
CT = (-1000.0, 1000.0, 1.0)  # what a stage that does not say takes: CT in HU


class CropSettingsError(ValueError):
    """A classifier's crops cannot be cut from a scan; the message names both."""


@dataclass
class Stage:
    """One network of the detection and what it takes.

    Attributes:
        run: classification: the crops of every view (float ``[B, 1, *width]`` each, stored values)
            -> class probabilities ``[B, C]``; segmentation: a normalised window -> its logits.
        inputs: its crops or window, their spacings and intensities.
        name: what it is, for messages (a checkpoint's or a bundle's path).
        settings: a segmentation's ``overlap`` and ``windows_per_batch``.
    """

    run: Callable[..., torch.Tensor]
    inputs: CropInputs
    name: str
    settings: dict = field(default_factory=dict)

    @property
    def intensity(self) -> tuple[float, float, float]:
        return self.inputs.intensity or CT


@dataclass(frozen=True)
class Findings:
    """What a scan holds, one row per candidate.

    Attributes:
        center_xyz: ``[n, 3]`` millimetres, the candidate's centre of mass.
        probability: ``[n]`` the classifier's P(nodule).
        segmentation: ``[n]`` the highest probability of the segmentation inside the candidate.
        diameter_mm: ``[n]`` the diameter of a ball of the candidate's volume.
        malignancy: ``[n]`` P(malignant), when a malignancy classifier was given.
    """

    center_xyz: np.ndarray
    probability: np.ndarray
    segmentation: np.ndarray
    diameter_mm: np.ndarray
    malignancy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.probability)


def segment(
    scan: Volume, segmentation: Stage, device: torch.device, threshold: float, min_volume_mm3: float
) -> Candidates:
    """The candidates of a scan (read with its own values, ``window=None``)."""
    low, high, scale = segmentation.intensity
    geometry = Geometry(scan.voxels.shape, scan.origin_xyz, scan.spacing_xyz, scan.direction)
    values = scan.voxels
    spacing = segmentation.inputs.spacings_mm[0] if segmentation.inputs.spacings_mm else None
    if spacing is not None:
        target = resampled_grid(geometry, spacing)
        values, geometry = resample(values, geometry, target, fill=low), target
    stored = torch.from_numpy(stored_values(values, (low, high), scale)).to(device)[None, None]
    probability = probability_map(
        segmentation.run,
        normalised(stored, (low, high, scale)),
        segmentation.inputs.widths_irc[0],
        segmentation.settings.get("overlap", 0.25),
        segmentation.settings.get("windows_per_batch", 4),
    )
    candidates = group_components(probability.cpu().numpy(), geometry, threshold, min_volume_mm3)
    scan_grid = Geometry(scan.voxels.shape, scan.origin_xyz, scan.spacing_xyz, scan.direction)
    _, inside = scan_grid.inside(candidates.center_xyz)  # a resampled grid may reach half a voxel beyond
    return candidates.take(inside)


def crops_of(scan: Volume, centers_xyz: np.ndarray, classifier: Stage) -> list[np.ndarray]:
    """The classifier's crops of every view around ``centers_xyz`` (int16 ``[n, *width]``), cut as
    its crop cache would have cut them (native or in millimetres).

    Raises:
        CropSettingsError: a crop the scan cannot give (a native crop wider than the scan).
    """
    low, high, scale = classifier.intensity
    spacings = classifier.inputs.spacings_mm or (None,) * len(classifier.inputs.widths_irc)
    views = []
    for width, spacing in zip(classifier.inputs.widths_irc, spacings, strict=True):
        view = View(width, spacing)
        try:
            crops, _ = cut_crops(scan, centers_xyz, view, (low, high), scale)
        except ValueError as error:
            raise CropSettingsError(
                f"scan {scan.name} ({'x'.join(map(str, scan.voxels.shape))} voxels): the "
                f"classifier {classifier.name} takes crops of {view.describe()}, which it cannot "
                f"give: {error}"
            ) from None
        views.append(crops)
    return views


@torch.no_grad()
def classify(
    scan: Volume, centers_xyz: np.ndarray, classifier: Stage, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """``[n, classes]`` the classifier's probabilities for crops around ``centers_xyz``."""
    views = crops_of(scan, centers_xyz, classifier)
    out = []
    for start in range(0, len(centers_xyz), batch_size):
        batch = [
            torch.from_numpy(view[start : start + batch_size]).float().to(device)[:, None] for view in views
        ]
        out.append(classifier.run(*batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 2))


@dataclass
class Detector:
    """The stages of detection, on one device.

    Args:
        segmentation: the segmentation stage.
        classifier: the candidate classifier (nodule or not).
        malignancy: optionally, a benign/malignant classifier of the nodules.
        threshold: a voxel with a segmentation probability above it belongs to a candidate.
        min_volume_mm3: candidates smaller than this are dropped.
        max_candidates: at most this many candidates of a scan are classified, those the
            segmentation is surest of (a warning names the scan when more were found). The bound
            keeps a weak segmentation or a low threshold from classifying thousands of crops per
            scan; LUNA16's own ``candidates.csv`` has about 850 a scan.
        device: where the networks run.
    """

    segmentation: Stage
    classifier: Stage
    malignancy: Stage | None = None
    threshold: float = 0.5
    min_volume_mm3: float = 0.0
    max_candidates: int = 1000
    device: torch.device = torch.device("cpu")

    def detect(self, path: str | Path | Volume) -> tuple[Findings, float]:
        """The findings of a scan (a file, or a ``Volume`` read with ``window=None``) and the seconds it took.

        Raises:
            ScanReadError: the scan cannot be read (naming it).
            CropSettingsError: a classifier's crops cannot be cut from it.
        """
        start = time.perf_counter()
        scan = path if isinstance(path, Volume) else Volume.read(path, window=None)
        candidates = segment(scan, self.segmentation, self.device, self.threshold, self.min_volume_mm3)
        if len(candidates) > self.max_candidates:
            log.warning(
                "scan %s: the segmentation found %d candidates at threshold %g; classifying the %d it "
                "is surest of (max_candidates; a higher threshold or a better segmentation finds fewer)",
                scan.name,
                len(candidates),
                self.threshold,
                self.max_candidates,
            )
            candidates = candidates.most_probable(self.max_candidates)
        empty = np.empty(0)
        if not len(candidates):
            return Findings(
                np.empty((0, 3)), empty, empty, empty, None if self.malignancy is None else empty
            ), time.perf_counter() - start
        nodule = classify(scan, candidates.center_xyz, self.classifier, self.device)[:, 1]
        malignancy = None
        if self.malignancy is not None:
            malignancy = classify(scan, candidates.center_xyz, self.malignancy, self.device)[:, 1]
        findings = Findings(
            candidates.center_xyz, nodule, candidates.probability, candidates.diameter_mm, malignancy
        )
        return findings, time.perf_counter() - start
