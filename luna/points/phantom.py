"""A phantom for your own data: CT-like NIfTI volumes with three kinds of finding, listed as a
points CSV (the classifier's route) and with a mask volume each, listed as (image, mask) pairs
(the segmentation's route, the image/label convention of MONAI and nnU-Net)::

    OUT_DIR/images/caseNNN.nii.gz   int16 volumes
    OUT_DIR/masks/caseNNN.nii.gz    uint8: 1 inside a finding
    OUT_DIR/points.csv              image,coordX,coordY,coordZ,label,group
    OUT_DIR/pairs.csv               image,mask,group

Command line: ``python -m luna.phantom points OUT_DIR [--seed S]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from luna.data.synthetic import ball
from luna.data.volume import Geometry, irc_to_xyz
from luna.io.files import write_folder_atomically
from luna.segmentation.masks import ball_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointsPhantomSpec:
    """A phantom for the points-CSV route: CT-like NIfTI volumes with three kinds of finding.

    ``solid`` are soft-tissue balls, ``cavity`` balls with an air-filled centre, ``calcified``
    small very dense balls; sizes overlap, so the kind is told by the inside, as a radiologist
    does. Two volumes per patient (the ``group`` column), several findings per volume.

    Args:
        patients: patients written; each has two volumes.
        findings_per_image: the most findings in a volume (at least 2).
        seed: everything follows from it.
        shape_irc: volume shape (slices, rows, columns).
        class_names: the three kinds of finding, in label order.
        in_plane_mm, slice_mm: the range of the in-plane and slice spacings, drawn uniformly per
            volume; e.g. ``(0.5, 1.0)`` and ``(0.5, 3.0)`` mix MRI-like thick slices with
            isotropic volumes.
        layout: the version of the folder's layout (2: with the masks and ``pairs.csv``).
    """

    patients: int = 30
    findings_per_image: int = 6
    seed: int = 0
    shape_irc: tuple[int, int, int] = (48, 96, 96)
    class_names: tuple[str, ...] = ("calcified", "cavity", "solid")
    in_plane_mm: tuple[float, float] = (0.7, 1.0)
    slice_mm: tuple[float, float] = (0.9, 1.5)
    layout: int = 2


def generate_points_phantom(out_dir: str | Path, spec: PointsPhantomSpec = PointsPhantomSpec()) -> Path:
    """Write the phantom's volumes, masks and CSVs into ``out_dir`` (atomically, a new folder)."""
    write_folder_atomically(out_dir, lambda folder: _write_points_phantom(folder, spec))
    log.info("phantom points dataset written to %s (%d volumes)", out_dir, 2 * spec.patients)
    return Path(out_dir)


def _write_points_phantom(folder: Path, spec: PointsPhantomSpec) -> None:
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    lines = ["image,coordX,coordY,coordZ,label,group\n"]
    pairs = ["image,mask,group\n"]
    seeds = np.random.SeedSequence(spec.seed).spawn(2 * spec.patients)
    shape = np.array(spec.shape_irc)
    for index in range(2 * spec.patients):
        rng = np.random.default_rng(seeds[index])
        spacing_xyz = np.array([rng.uniform(*spec.in_plane_mm), 0.0, rng.uniform(*spec.slice_mm)])
        spacing_xyz[1] = spacing_xyz[0]
        spacing_irc = spacing_xyz[::-1].astype(np.float32)
        origin_xyz = np.array([rng.uniform(-200, -100), rng.uniform(-200, -100), rng.uniform(-300, -100)])
        edge_mm = float(spacing_irc.min())
        volume = np.full(tuple(shape), -850.0, dtype=np.float32)  # lung-like background
        placed: list[tuple[np.ndarray, float]] = []
        for _ in range(rng.integers(2, spec.findings_per_image + 1)):
            kind = int(rng.integers(0, 3))
            diameter = float(rng.uniform(5.0, 9.0) if kind == 0 else rng.uniform(7.0, 16.0))
            margin = diameter / 2 / spacing_irc + 3
            center_irc = rng.uniform(margin, shape - 1 - margin)
            if any(
                np.linalg.norm((center_irc - c) * spacing_irc) <= (diameter + d) / 2 + 2 for c, d in placed
            ):
                continue  # would overlap another finding
            placed.append((center_irc, diameter))
            if kind == 0:  # calcified
                ball(volume, center_irc, diameter / 2, rng.uniform(350.0, 700.0), spacing_irc, edge_mm)
            else:
                ball(volume, center_irc, diameter / 2, rng.uniform(0.0, 80.0), spacing_irc, edge_mm)
                if kind == 1:  # cavity: air inside
                    ball(volume, center_irc, diameter * rng.uniform(0.25, 0.35), -950.0, spacing_irc, edge_mm)
            marked = center_irc + rng.uniform(-1.0, 1.0, size=3) * diameter / 10 / spacing_irc
            x, y, z = irc_to_xyz(marked, origin_xyz, spacing_xyz, np.eye(3))
            lines.append(
                f"images/case{index:03d}.nii.gz,{x:.4f},{y:.4f},{z:.4f},{spec.class_names[kind]},"
                f"patient{index // 2:03d}\n"
            )
        volume += rng.normal(0.0, 25.0, size=volume.shape).astype(np.float32)
        geometry = Geometry(tuple(shape), origin_xyz, spacing_xyz, np.eye(3))
        centers = np.array([irc_to_xyz(c, origin_xyz, spacing_xyz, np.eye(3)) for c, _ in placed]).reshape(
            -1, 3
        )
        mask = ball_mask(geometry, centers, np.array([d for _, d in placed]), threshold=None)
        name = f"case{index:03d}.nii.gz"
        for values, part in (
            (np.clip(np.rint(volume), -1024, 3071).astype(np.int16), "images"),
            (mask, "masks"),
        ):
            image = sitk.GetImageFromArray(values)
            image.SetSpacing(tuple(float(v) for v in spacing_xyz))
            image.SetOrigin(tuple(float(v) for v in origin_xyz))
            sitk.WriteImage(image, str(folder / part / name), useCompression=True)
        pairs.append(f"images/{name},masks/{name},patient{index // 2:03d}\n")
    (folder / "points.csv").write_text("".join(lines))
    (folder / "pairs.csv").write_text("".join(pairs))
    (folder / "phantom.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
