"""LUNA16-format phantom data: the default dataset of the main job and the data of the tests.

The real release (~120 GB) cannot ship with a template, but every code path must run on data laid
out exactly like it. ``generate_phantom`` writes such a folder::

    OUT_DIR/subset0/<seriesuid>.mhd + .raw   int16 HU, varied spacing and origin
    OUT_DIR/subset1/...                     one scan with a non-identity direction matrix
    OUT_DIR/seg-lungs-LUNA16/<uid>.mhd      a lung mask, as in the release (not a scan)
    OUT_DIR/annotations.csv                 seriesuid,coordX,coordY,coordZ,diameter_mm
    OUT_DIR/annotations_excluded.csv        irrelevant findings (same columns; -1 = unknown size)
    OUT_DIR/annotations_with_malignancy.csv the nodules with mal_bool (the book's chapter 14)
    OUT_DIR/candidates.csv                  seriesuid,coordX,coordY,coordZ,class
    OUT_DIR/seriesuids.csv                  the scans on disk, one uid per line, no header
    OUT_DIR/phantom.json                    the parameters (written last: the folder is complete)

Each scan holds a body, two lungs, vessels (tubes: the hard negatives, round in a single slice
like a nodule), 1-5 nodules, noise and out-of-field padding (-3024 or -2000 HU).

Two geometries: ``simple`` (the default job and the tests: ``shape_irc`` voxels of 0.9-1.3 mm
in-plane and 1-2.5 mm slices, nodules of 3-30 mm, log-uniform) and ``luna16`` (spacings drawn
like LUNA16's: 0.46-0.98 mm in-plane, slices at the common reconstruction intervals 0.625-2.5 mm;
the shape follows from a fixed ``field_of_view_mm``; nodule diameters 3.25-32 mm with a median
near 6.4 mm as in ``annotations.csv``; and blobs on the pleura as hard negatives).
Nodules are benign or malignant as a radiologist would judge them: malignancy grows with size,
malignant nodules are lobulated and spiculated, and some benign ones are calcified (dense).
Irrelevant findings, as in ``annotations_excluded.csv``, are nodules under 3 mm and unsized
non-nodule findings on vessels. Candidates are the nodules (class 1, jittered) and negatives on
vessels, on the irrelevant findings, in the lungs, in the body and within a few voxels of each of
the six faces; some candidate rows belong to series that are not on disk, as when a user has
only some subsets. The same arguments give the same bytes.

Command line: ``python -m luna.phantom luna16 OUT_DIR [--series N] [--seed S] [--shape_irc I R C]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from luna.data.synthetic import ball, ellipsoid, tube
from luna.data.volume import irc_to_xyz
from luna.io.files import describe_bytes, folder_size, write_folder_atomically

log = logging.getLogger(__name__)

MARKER = "phantom.json"
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
# A non-symmetric rotation (90 degrees about z): catches code that assumes an identity direction.
ROTATED_DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
FLIPPED_DIRECTION = np.diag([-1.0, -1.0, 1.0])
# LUNA16's slice spacings cluster at the reconstruction intervals of its scanners; the weights are
# our estimate of their shares (2.5 and 1.25 mm the most common), not counts from the release
SLICE_SPACINGS_MM = (0.625, 0.7, 0.75, 0.8, 1.0, 1.25, 1.5, 1.8, 2.0, 2.5)
SLICE_SPACING_WEIGHTS = (0.07, 0.01, 0.02, 0.03, 0.12, 0.24, 0.01, 0.02, 0.15, 0.33)
IN_PLANE_MM = (0.46, 0.98, 0.69, 0.08)  # range, and the mean and spread of a clipped normal
DIAMETER_MM = (3.25, 32.0, 6.4, 0.6)  # range, and the median and log-spread of a clipped log-normal
Geometry = Literal["simple", "luna16"]


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate.

    Args:
        series: number of scans written to disk.
        seed: everything (uids, anatomy, noise, candidates) follows from it.
        shape_irc: volume shape (slices, rows, columns); (150, 512, 512) is real size.
        subsets: number of ``subsetK`` folders the scans are spread over.
        missing_series: extra series that appear in the CSVs but not on disk.
        noise_hu: standard deviation of the Gaussian noise.
        geometry: ``simple`` (``shape_irc`` voxels of 0.9-1.3 x 1-2.5 mm, nodules of 3-30 mm) or
            ``luna16`` (LUNA16's spacings and nodule sizes, pleural blobs; the shape follows from
            ``field_of_view_mm``).
        field_of_view_mm: the extent of a ``luna16`` scan along I, R, C in millimetres.
    """

    series: int = 40
    seed: int = 0
    shape_irc: tuple[int, int, int] = (64, 128, 128)
    subsets: int = 10
    missing_series: int = 2
    noise_hu: float = 30.0
    geometry: Geometry = "simple"
    field_of_view_mm: tuple[float, float, float] = (90.0, 120.0, 120.0)


@dataclass
class _Scan:
    uid: str
    hu: np.ndarray
    spacing_xyz: np.ndarray
    origin_xyz: np.ndarray
    direction: np.ndarray
    lung_mask: np.ndarray
    nodules: list[tuple[np.ndarray, float, bool]] = field(
        default_factory=list
    )  # (center_irc, diameter_mm, malignant)
    irrelevant: list[tuple[np.ndarray, float]] = field(
        default_factory=list
    )  # (center_irc, diameter_mm or -1)
    negatives_irc: list[np.ndarray] = field(default_factory=list)


def _series_uid(rng: np.random.Generator) -> str:
    digits = "".join(str(d) for d in rng.integers(0, 10, size=30))
    return UID_ROOT + str(rng.integers(1, 10)) + digits[1:]


def _inside_ellipsoid(point: np.ndarray, center: np.ndarray, semi_axes: np.ndarray) -> bool:
    return float((((point - center) / semi_axes) ** 2).sum()) < 1.0


def _spacing_and_shape(spec: PhantomSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A scan's voxel size (x, y, z) and shape (I, R, C), drawn as ``spec.geometry`` says."""
    if spec.geometry == "simple":
        spacing_xyz = np.array([rng.uniform(0.9, 1.3), 0.0, rng.uniform(1.0, 2.5)])
        spacing_xyz[1] = spacing_xyz[0]
        return spacing_xyz, np.array(spec.shape_irc)
    low, high, mean, spread = IN_PLANE_MM
    in_plane = float(np.clip(rng.normal(mean, spread), low, high))
    slices = float(
        rng.choice(SLICE_SPACINGS_MM, p=np.array(SLICE_SPACING_WEIGHTS) / sum(SLICE_SPACING_WEIGHTS))
    )
    spacing_xyz = np.array([in_plane, in_plane, slices])
    return spacing_xyz, np.round(np.array(spec.field_of_view_mm) / spacing_xyz[::-1]).astype(int)


def _nodule_diameter(spec: PhantomSpec, rng: np.random.Generator) -> float:
    if spec.geometry == "simple":
        return float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
    low, high, median, spread = DIAMETER_MM
    return float(np.clip(median * np.exp(rng.normal(0.0, spread)), low, high))


def _make_scan(spec: PhantomSpec, index: int, rng: np.random.Generator) -> _Scan:
    spacing_xyz, shape = _spacing_and_shape(spec, rng)
    spacing_irc = spacing_xyz[::-1].astype(np.float32)
    extent_mm = shape * spacing_irc
    edge_mm = float(spacing_irc.min())
    direction = {1: ROTATED_DIRECTION, 2: FLIPPED_DIRECTION}.get(index, np.eye(3))
    origin_xyz = np.array([rng.uniform(-250, -100), rng.uniform(-250, -100), rng.uniform(-400, -50)])

    # Body and field of view: 2D masks broadcast along the slices.
    r = (np.arange(shape[1], dtype=np.float32) * spacing_irc[1])[:, None]
    c = (np.arange(shape[2], dtype=np.float32) * spacing_irc[2])[None, :]
    center_rc = extent_mm[1:] / 2
    body = ((r - center_rc[0]) / (0.38 * extent_mm[1])) ** 2 + (
        (c - center_rc[1]) / (0.47 * extent_mm[2])
    ) ** 2 < 1
    fov = (r - center_rc[0]) ** 2 + (c - center_rc[1]) ** 2 < (0.5 * extent_mm[1:].min()) ** 2
    volume = np.where(body, np.float32(40.0), np.float32(-1000.0))
    volume = np.broadcast_to(volume, tuple(shape)).astype(np.float32)

    lung_semi = np.array([0.44, 0.28, 0.18]) * extent_mm
    lung_centers = [extent_mm * np.array([0.5, 0.48, 0.5 + side * 0.21]) for side in (-1, 1)]
    for center_mm in lung_centers:
        ellipsoid(volume, center_mm / spacing_irc, lung_semi, -860.0, spacing_irc, edge_mm)
    lung_mask = volume < -500

    scan = _Scan(_series_uid(rng), volume, spacing_xyz, origin_xyz, direction, lung_mask)
    vessel_points = _draw_vessels(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm)
    _draw_nodules(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm, spec)
    blobs = (
        _draw_pleural_blobs(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm)
        if spec.geometry == "luna16"
        else []
    )
    _choose_negatives(scan, rng, vessel_points, lung_centers, lung_semi, spacing_irc, body, blobs)
    _draw_irrelevant(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm)

    volume += rng.normal(0.0, spec.noise_hu, size=volume.shape).astype(np.float32)
    padding = -3024.0 if index % 2 == 0 else -2000.0
    volume[:, ~fov] = padding
    scan.hu = np.clip(np.rint(volume), -32768, 32767).astype(np.int16)
    return scan


def _random_lung_point(rng, lung_centers, lung_semi, shrink=0.85) -> np.ndarray:
    center = lung_centers[rng.integers(0, 2)]
    while True:
        offset = rng.uniform(-1, 1, size=3)
        if (offset**2).sum() < 1:
            return center + offset * lung_semi * shrink


def _draw_vessels(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm) -> list[np.ndarray]:
    """Random-walk tubes from each lung's hilum outward, tapering; returns points on them (IRC)."""
    points = []
    for center_mm in lung_centers:
        for _ in range(7):
            position = center_mm + rng.normal(0, 0.15, size=3) * lung_semi
            heading = rng.normal(size=3)
            radius = rng.uniform(0.9, 1.8)
            for _ in range(6):
                heading = heading / np.linalg.norm(heading) + rng.normal(0, 0.35, size=3)
                heading /= np.linalg.norm(heading)
                step = heading * rng.uniform(6.0, 14.0)
                end = position + step
                if not _inside_ellipsoid(end, center_mm, lung_semi * 0.95):
                    break
                tube(scan.hu, position / spacing_irc, end / spacing_irc, radius, 45.0, spacing_irc, edge_mm)
                points.append(((position + end) / 2) / spacing_irc)
                position, radius = end, max(radius * 0.85, 0.5)
    return points


def _draw_nodules(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm, spec: PhantomSpec) -> None:
    for _ in range(rng.integers(1, 6)):
        diameter = _nodule_diameter(spec, rng)
        center_mm = _random_lung_point(rng, lung_centers, lung_semi, shrink=0.75)
        malignant = bool(rng.random() < 1 / (1 + np.exp(-(diameter - 12.0) / 4.0)))
        calcified = not malignant and rng.random() < 0.3
        density = (
            rng.uniform(300.0, 600.0)
            if calcified
            else rng.uniform(-80.0, 120.0) + (60.0 if malignant else 0.0)
        )
        center_irc = center_mm / spacing_irc
        ball(scan.hu, center_irc, diameter / 2, density, spacing_irc, edge_mm)
        # Texture: lobules make larger nodules uneven; malignant ones are lobulated and spiculated.
        lobules = int(diameter // 8) + (3 if malignant else 0)
        for _ in range(lobules):
            lobule = center_mm + rng.normal(0, diameter / (4 if malignant else 6), size=3)
            ball(
                scan.hu,
                lobule / spacing_irc,
                diameter / 4,
                density + rng.uniform(-60, 60),
                spacing_irc,
                edge_mm,
            )
        if malignant:
            for _ in range(rng.integers(4, 9)):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                start = center_mm + direction * diameter * 0.4
                end = center_mm + direction * diameter * rng.uniform(0.8, 1.3)
                tube(
                    scan.hu,
                    start / spacing_irc,
                    end / spacing_irc,
                    rng.uniform(0.4, 0.8),
                    density,
                    spacing_irc,
                    edge_mm,
                )
        scan.nodules.append((center_irc, diameter, malignant))


def _draw_pleural_blobs(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm) -> list[np.ndarray]:
    """Soft-tissue bumps on the lung wall (hard negatives: round, nodule-dense, at the pleura);
    returns their centres (IRC)."""
    points = []
    for _ in range(3):
        center = lung_centers[rng.integers(0, 2)]
        heading = rng.normal(size=3)
        on_wall = center + heading / np.sqrt(((heading / lung_semi) ** 2).sum())
        ball(
            scan.hu,
            on_wall / spacing_irc,
            rng.uniform(2.0, 5.0),
            rng.uniform(0.0, 80.0),
            spacing_irc,
            edge_mm,
        )
        points.append(on_wall / spacing_irc)
    return points


def _draw_irrelevant(scan, rng, lung_centers, lung_semi, spacing_irc, edge_mm) -> None:
    """Findings the official scoring ignores: nodules under 3 mm, and unsized findings on vessels."""
    for _ in range(rng.integers(0, 3)):
        diameter = float(rng.uniform(1.5, 2.9))
        center_mm = _random_lung_point(rng, lung_centers, lung_semi, shrink=0.75)
        ball(scan.hu, center_mm / spacing_irc, diameter / 2, rng.uniform(-80.0, 120.0), spacing_irc, edge_mm)
        scan.irrelevant.append((center_mm / spacing_irc, diameter))
    if scan.negatives_irc and rng.random() < 0.5:
        scan.irrelevant.append((scan.negatives_irc[0], -1.0))  # the first negative is on a vessel


def _choose_negatives(scan, rng, vessel_points, lung_centers, lung_semi, spacing_irc, body, blobs) -> None:
    """Negative candidates: points on vessels, in the lungs, in the body, near every face, and every blob."""
    shape = np.array(scan.hu.shape)
    picks = rng.permutation(len(vessel_points))[:12]
    negatives = [vessel_points[k] for k in picks] + list(blobs)
    negatives += [_random_lung_point(rng, lung_centers, lung_semi) / spacing_irc for _ in range(6)]
    body_voxels = np.argwhere(body & ~scan.lung_mask[shape[0] // 2])
    for k in rng.choice(len(body_voxels), size=4, replace=False):
        negatives.append(np.array([rng.uniform(0, shape[0] - 1), *body_voxels[k]], dtype=np.float64))
    for axis in range(3):  # within 3 voxels of both faces of each axis
        for face in (0, 1):
            point = rng.uniform(0.2, 0.8, size=3) * (shape - 1)
            depth = rng.uniform(0, 3)
            point[axis] = depth if face == 0 else shape[axis] - 1 - depth
            negatives.append(point)
    # Keep negatives off the nodules: in LUNA16 a candidate that close to a nodule is class 1.
    scan.negatives_irc = [
        point
        for point in negatives
        if all(
            np.linalg.norm((point - center) * spacing_irc) > diameter / 2 + 3.0
            for center, diameter, _ in scan.nodules
        )
    ]


def _xyz(scan: _Scan, center_irc: np.ndarray) -> tuple[float, float, float]:
    return irc_to_xyz(center_irc, scan.origin_xyz, scan.spacing_xyz, scan.direction)


def _write_image(array: np.ndarray, scan: _Scan, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in scan.spacing_xyz))
    image.SetOrigin(tuple(float(v) for v in scan.origin_xyz))
    image.SetDirection(tuple(float(v) for v in scan.direction.ravel()))
    sitk.WriteImage(image, str(path), useCompression=False)


def _csv_row(uid: str, xyz: tuple[float, float, float], last: str) -> str:
    return f"{uid},{xyz[0]:.9f},{xyz[1]:.9f},{xyz[2]:.9f},{last}\n"


def generate_phantom(out_dir: str | Path, spec: PhantomSpec = PhantomSpec()) -> Path:
    """Write a LUNA16-format phantom folder to ``out_dir`` (atomically, a new folder) and return its path."""
    write_folder_atomically(out_dir, lambda folder: _write_phantom(folder, spec))
    log.info(
        "phantom LUNA16 data written to %s (%d scans, %s)",
        out_dir,
        spec.series,
        describe_bytes(folder_size(out_dir)),
    )
    return Path(out_dir)


def _write_phantom(folder: Path, spec: PhantomSpec) -> None:
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.series + 1)
    annotation_rows, excluded_rows, malignancy_rows, candidate_rows, uids = [], [], [], [], []
    for index in range(spec.series):
        rng = np.random.default_rng(seeds[index])
        scan = _make_scan(spec, index, rng)
        uids.append(scan.uid)
        subset = folder / f"subset{index % spec.subsets}"
        subset.mkdir(exist_ok=True)
        _write_image(scan.hu, scan, subset / f"{scan.uid}.mhd")
        if index == 0:
            masks = folder / "seg-lungs-LUNA16"
            masks.mkdir()
            _write_image(scan.lung_mask.astype(np.int16), scan, masks / f"{scan.uid}.mhd")
        for center_irc, diameter, malignant in scan.nodules:
            xyz = _xyz(scan, center_irc)
            annotation_rows.append(_csv_row(scan.uid, xyz, f"{diameter:.8f}"))
            ratings = _radiologist_ratings(rng, malignant)
            malignancy_rows.append(_csv_row(scan.uid, xyz, f'{diameter:.8f},{malignant},"{ratings}"'))
            jitter_count = 2 if diameter >= 10 else 1
            for _ in range(jitter_count):
                jitter_mm = rng.uniform(-1, 1, size=3) * diameter / 10
                jittered = center_irc + jitter_mm / scan.spacing_xyz[::-1]
                candidate_rows.append(_csv_row(scan.uid, _xyz(scan, jittered), "1"))
        for center_irc, diameter in scan.irrelevant:
            excluded_rows.append(_csv_row(scan.uid, _xyz(scan, center_irc), f"{diameter:.8f}"))
            if diameter > 0:  # a candidate on a small nodule: class 0, as in the release
                jittered = center_irc + rng.uniform(-0.5, 0.5, size=3) / scan.spacing_xyz[::-1]
                candidate_rows.append(_csv_row(scan.uid, _xyz(scan, jittered), "0"))
        candidate_rows += [_csv_row(scan.uid, _xyz(scan, point), "0") for point in scan.negatives_irc]
        log.debug("phantom scan %d/%d written: %s", index + 1, spec.series, scan.uid)
    rng = np.random.default_rng(seeds[-1])
    for _ in range(spec.missing_series):
        uid = _series_uid(rng)
        xyz = tuple(rng.uniform(-150, 150, size=3))
        annotation_rows.append(_csv_row(uid, xyz, "6.50000000"))
        candidate_rows += [_csv_row(uid, xyz, "1"), _csv_row(uid, tuple(np.add(xyz, 40.0)), "0")]
    order = np.random.default_rng(seeds[-1]).permutation(len(candidate_rows))
    header = "seriesuid,coordX,coordY,coordZ,"
    (folder / "annotations.csv").write_text(header + "diameter_mm\n" + "".join(annotation_rows))
    (folder / "annotations_excluded.csv").write_text(header + "diameter_mm\n" + "".join(excluded_rows))
    (folder / "annotations_with_malignancy.csv").write_text(
        header + "diameter_mm,mal_bool,mal_details\n" + "".join(malignancy_rows)
    )
    (folder / "candidates.csv").write_text(header + "class\n" + "".join(candidate_rows[k] for k in order))
    (folder / "seriesuids.csv").write_text("".join(f"{uid}\n" for uid in uids))
    (folder / MARKER).write_text(json.dumps(asdict(spec), indent=2) + "\n")


def _radiologist_ratings(rng: np.random.Generator, malignant: bool) -> str:
    """LIDC-style malignancy ratings (1-5) of up to four readers, consistent with ``malignant``."""
    readers = int(rng.integers(1, 5))
    low, high = (4, 6) if malignant else (1, 3)
    return str([int(r) for r in rng.integers(low, high, size=readers)])
