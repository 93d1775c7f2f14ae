"""Saliency files of ``luna.infer --saliency``: per point, the occlusion map of the classifier
(``luna.models.saliency``) as NIfTI on the crop's grid in the scan's physical frame, and a PNG of
its three planes over the crop."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from luna.data.crops import View
from luna.data.cutting import cut_crops
from luna.data.volume import Volume
from luna.models.saliency import occlusion_map

log = logging.getLogger(__name__)


def crop_geometry(scan: Volume, center_xyz: np.ndarray, view: View, offset_irc: np.ndarray) -> sitk.Image:
    """An empty image on the crop's grid in the scan's physical frame (native: the scan's voxels;
    physical: ``view.spacing_mm`` along the scan's axes, the point at voxel ``offset_irc``)."""
    spacing_irc = np.asarray(
        view.spacing_mm if view.spacing_mm is not None else scan.spacing_xyz[::-1], float
    )
    cri_spacing = spacing_irc[::-1]
    if view.spacing_mm is None:
        from luna.data.volume import xyz_to_irc

        start_irc = (
            np.asarray(xyz_to_irc(center_xyz, scan.origin_xyz, scan.spacing_xyz, scan.direction)) - offset_irc
        )
        origin = scan.origin_xyz + scan.direction @ (start_irc[::-1] * cri_spacing)
    else:
        origin = center_xyz - scan.direction @ (offset_irc[::-1] * cri_spacing)
    image = sitk.Image([int(w) for w in view.width_irc[::-1]], sitk.sitkFloat32)
    image.SetOrigin(origin.tolist())
    image.SetSpacing(cri_spacing.tolist())
    image.SetDirection(scan.direction.ravel().tolist())
    return image


def write_saliency(
    classifier, scan: Volume, points: list[tuple[str, np.ndarray]], folder: Path
) -> list[Path]:
    """For each ``(name, xyz)`` point of ``scan``: ``<folder>/<scan>-<k>.nii.gz``, the occlusion map of
    P(the most probable class other than the first, for two classes: class 1) on the first view's
    crop grid, and ``.png``, its three planes through the point over the crop; returns the files."""
    from luna.evaluation.figures import save_png

    folder.mkdir(parents=True, exist_ok=True)
    low, _, scale = classifier.info.intensity
    width, spacing = classifier.info.views[0]
    view = View(width, spacing)
    written = []
    for k, (_, center) in enumerate(points):
        crops = [
            cut_crops(scan, center[None], View(w, s), classifier.info.intensity[:2], scale)
            for w, s in classifier.info.views
        ]
        views = [torch.from_numpy(crop).float()[:, None] for crop, _ in crops]
        probabilities = classifier.stage.run(*views)[0]
        class_index = 1 if len(probabilities) == 2 else int(torch.argmax(probabilities))
        saliency = occlusion_map(classifier.stage.run, views, class_index, low * scale)
        offset = crops[0][1][0]
        stem = folder / f"{scan.name}-{k}"
        image = sitk.GetImageFromArray(saliency.astype(np.float32))
        image.CopyInformation(crop_geometry(scan, center, view, offset))
        sitk.WriteImage(image, str(stem.with_suffix(".nii.gz")))
        save_png(
            _planes_figure(
                crops[0][0][0], saliency, offset, classifier.info, float(probabilities[class_index])
            ),
            stem.with_suffix(".png"),
        )
        written += [stem.with_suffix(".nii.gz"), stem.with_suffix(".png")]
    log.info("saliency: %d maps of %s written to %s", len(points), scan.name, folder)
    return written


def _planes_figure(crop: np.ndarray, saliency: np.ndarray, offset: np.ndarray, info, probability: float):
    from matplotlib.figure import Figure

    from luna.metrics.figures import SALIENCY_MAP, display_window

    low, high = display_window(info.intensity)
    i, r, c = (int(v) for v in np.clip(offset, 0, np.array(crop.shape) - 1))
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    peak = float(np.abs(saliency).max()) or 1.0
    for ax, (name, image, heat) in zip(
        fig.subplots(1, 3),
        (
            ("axial", crop[i], saliency[i]),
            ("coronal", crop[:, r], saliency[:, r]),
            ("sagittal", crop[:, :, c], saliency[:, :, c]),
        ),
        strict=True,
    ):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.imshow(heat, cmap=SALIENCY_MAP, alpha=0.4, vmin=-peak, vmax=peak)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(name, fontsize=8)
    fig.suptitle(f"occlusion sensitivity of P = {probability:.2f} (red: evidence for it)", fontsize=10)
    return fig
