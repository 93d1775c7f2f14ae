"""FROC analysis and CPM, rule for rule as LUNA16's ``noduleCADEvaluationLUNA16.py``, vectorised.

LUNA16 systems are compared by one number: the competition performance metric (CPM), the mean
sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan. This module computes it from
arrays (no files, no Lightning) with the official script's rules: the 100-mark cap with ties, hits
strictly inside the radius, a nodule's highest-probability hit, irrelevant findings ignored,
interpolation on the curve, a bootstrap over scans. ``docs/luna16.md`` states each rule once; the
functions below say which one they apply, and the tests keep a literal transcription beside them.

Where the official script divides by zero, this module defines the result instead: with no
detected nodule the sensitivity is 0 everywhere (the script gives NaN), and with no nodule at all
it is NaN (undefined), which callers report.

The curve's floating-point operations follow scikit-learn's ``roc_curve`` as the official script
uses it (``fpr = fp / fp[-1]``, then ``fpr * false_positives / scans``), so that a point landing
exactly on 1/8, 1/4... FP per scan is read off the same side of a vertical step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FP_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_MARKS_PER_SCAN = 100
UNKNOWN_DIAMETER_MM = 10.0  # what the official script assumes for a finding of diameter < 0
BAND_POINTS = 10_000  # the official bootstrap curves are sampled on this many FP/scan points


@dataclass(frozen=True)
class Findings:
    """Annotated findings (nodules, or irrelevant findings) of the evaluated scans, in file order.

    Attributes:
        scan: ``[n]`` int, each finding's scan (an index into the evaluated scans).
        center_xyz: ``[n, 3]`` float64, centres in millimetres.
        diameter_mm: ``[n]`` float64; below 0 means unknown (10 mm is used).
    """

    scan: np.ndarray
    center_xyz: np.ndarray
    diameter_mm: np.ndarray

    @classmethod
    def empty(cls) -> Findings:
        return cls(np.empty(0, np.int64), np.empty((0, 3)), np.empty(0))


@dataclass(frozen=True)
class Reference:
    """What marks are scored against: the evaluated scans and their findings.

    Attributes:
        scans: the evaluated series uids; findings and marks refer to them by position.
        nodules: the nodules of those scans (``annotations.csv`` order).
        irrelevant: their irrelevant findings (``annotations_excluded.csv`` order; may be empty).
    """

    scans: list[str]
    nodules: Findings
    irrelevant: Findings

    def scan_index(self) -> dict[str, int]:
        """Series uid -> position in ``scans``."""
        return {uid: k for k, uid in enumerate(self.scans)}


@dataclass(frozen=True)
class Marks:
    """A system's marks (CAD candidates with a probability) on the evaluated scans.

    Attributes:
        scan: ``[m]`` int, each mark's scan (an index into the evaluated scans).
        center_xyz: ``[m, 3]`` float64, millimetres.
        probability: ``[m]`` float64, finite; only the order matters.
    """

    scan: np.ndarray
    center_xyz: np.ndarray
    probability: np.ndarray


@dataclass(frozen=True)
class FrocCounts:
    """What the scoring saw. ``nodules`` counts missed ones too; ``double_detections`` are the
    extra marks on already hit nodules (not false positives); ``capped_marks`` were dropped by the
    100-marks-per-scan rule."""

    scans: int
    nodules: int
    detected: int
    false_positives: int
    irrelevant_marks: int
    double_detections: int
    capped_marks: int


@dataclass(frozen=True)
class Bootstrap:
    """The bootstrap over scans.

    Attributes:
        samples: resamples drawn; ``seed`` seeds them.
        cpm_ci: the 2.5 % and 97.5 % order statistics of the resamples' CPM
            (``sorted[floor(0.025 n)]``, ``sorted[floor(0.975 n)]``, as the official script).
        cpm_mean: mean CPM over the resamples.
        sensitivity_ci: ``[7, 2]``, the same order statistics of each operating point's sensitivity.
        fp_per_scan: the band's x, ``BAND_POINTS`` points from 1/8 to 8.
        sensitivity_mean, sensitivity_low, sensitivity_high: the band, pointwise.
        undefined: resamples without a nodule (no sensitivity), left out of the statistics.
    """

    samples: int
    seed: int
    cpm_ci: tuple[float, float]
    cpm_mean: float
    sensitivity_ci: np.ndarray
    fp_per_scan: np.ndarray
    sensitivity_mean: np.ndarray
    sensitivity_low: np.ndarray
    sensitivity_high: np.ndarray
    undefined: int = 0


@dataclass(frozen=True)
class FrocResult:
    """A FROC analysis.

    Attributes:
        fp_per_scan: the operating points (1/8 ... 8).
        sensitivity: the sensitivity at each of them.
        cpm: their mean (NaN when the evaluated scans hold no nodule).
        curve_fp_per_scan, curve_sensitivity: the whole curve, from (0, 0).
        counts: what was scored.
        bootstrap: the interval, when asked for.
    """

    fp_per_scan: tuple[float, ...]
    sensitivity: np.ndarray
    cpm: float
    curve_fp_per_scan: np.ndarray
    curve_sensitivity: np.ndarray
    counts: FrocCounts
    bootstrap: Bootstrap | None = field(default=None)


@dataclass(frozen=True)
class _Entries:
    """The FROC entries: one per detected nodule (label 1) and per false positive (label 0)."""

    scan: np.ndarray
    label: np.ndarray
    probability: np.ndarray
    nodules_per_scan: np.ndarray  # detected and missed


def cap_marks(marks: Marks, scan_count: int, max_marks: int = MAX_MARKS_PER_SCAN) -> tuple[Marks, int]:
    """The marks that survive the per-scan cap, and how many were dropped.

    A scan with more than ``max_marks`` marks keeps those strictly more probable than its
    ``(max_marks + 1)``-th most probable mark; ties at that value are all dropped.
    """
    per_scan = np.bincount(marks.scan, minlength=scan_count)
    if not (per_scan > max_marks).any():
        return marks, 0
    order = np.lexsort((-marks.probability, marks.scan))  # by scan, most probable first
    starts = np.concatenate([[0], np.cumsum(per_scan)[:-1]])
    over = np.flatnonzero(per_scan > max_marks)
    threshold = np.full(scan_count, -np.inf)
    threshold[over] = marks.probability[order[starts[over] + max_marks]]
    keep = marks.probability > threshold[marks.scan]
    kept = Marks(marks.scan[keep], marks.center_xyz[keep], marks.probability[keep])
    return kept, int((~keep).sum())


def _hits(marks: Marks, findings: Findings, scan_count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(finding, mark)`` index pairs where the mark lies strictly inside the finding's radius."""
    order = np.argsort(marks.scan, kind="stable")
    per_scan = np.bincount(marks.scan, minlength=scan_count)
    starts = np.concatenate([[0], np.cumsum(per_scan)[:-1]])
    counts = per_scan[findings.scan]
    finding = np.repeat(np.arange(len(findings.scan)), counts)
    first_pair = np.cumsum(counts) - counts
    within = np.arange(counts.sum()) - np.repeat(first_pair, counts)
    mark = order[np.repeat(starts[findings.scan], counts) + within]
    delta = findings.center_xyz[finding] - marks.center_xyz[mark]
    squared = delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1] + delta[:, 2] * delta[:, 2]
    diameter = np.where(findings.diameter_mm < 0, UNKNOWN_DIAMETER_MM, findings.diameter_mm)
    radius_squared = (diameter / 2.0) ** 2
    hit = squared < radius_squared[finding]
    return finding[hit], mark[hit]


def _entries(marks: Marks, nodules: Findings, irrelevant: Findings, scan_count: int) -> tuple[_Entries, dict]:
    """Match marks to findings: detected nodules with their best probability, and false positives."""
    nodule_hit, nodule_mark = _hits(marks, nodules, scan_count)
    best = np.full(len(nodules.scan), -np.inf)
    np.maximum.at(best, nodule_hit, marks.probability[nodule_mark])
    detected = np.isfinite(best)
    hits_per_nodule = np.bincount(nodule_hit, minlength=len(nodules.scan))
    in_pool = np.ones(len(marks.scan), dtype=bool)
    in_pool[nodule_mark] = False
    _, irrelevant_mark = _hits(marks, irrelevant, scan_count)
    irrelevant_marks = np.unique(irrelevant_mark[in_pool[irrelevant_mark]])
    in_pool[irrelevant_marks] = False
    entries = _Entries(
        scan=np.concatenate([nodules.scan[detected], marks.scan[in_pool]]).astype(np.int64),
        label=np.concatenate([np.ones(int(detected.sum())), np.zeros(int(in_pool.sum()))]),
        probability=np.concatenate([best[detected], marks.probability[in_pool]]),
        nodules_per_scan=np.bincount(nodules.scan, minlength=scan_count),
    )
    counts = {
        "nodules": len(nodules.scan),
        "detected": int(detected.sum()),
        "false_positives": int(in_pool.sum()),
        "irrelevant_marks": len(irrelevant_marks),
        "double_detections": int(np.maximum(hits_per_nodule - 1, 0).sum()),
    }
    return entries, counts


def _threshold_order(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries sorted by decreasing probability, and the last position of each distinct value."""
    order = np.argsort(probability, kind="mergesort")[::-1]
    if len(order) == 0:
        return order, order
    ends = np.r_[np.flatnonzero(np.diff(probability[order])), len(order) - 1]
    return order, ends


def _curve(
    true_positives: np.ndarray, false_positives: np.ndarray, scan_count: int, nodule_count: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FP/scan and sensitivity from cumulative counts at each threshold, ``[..., k]`` (rows: resamples).

    ``nodule_count`` broadcasts against ``[..., 1]``. A (0, 0) point is prepended. The float
    operations are those of ``roc_curve`` and the official script, so that a point exactly at an
    operating point lands on the same side of a step.
    """
    zeros = np.zeros((*true_positives.shape[:-1], 1))
    tp = np.concatenate([zeros, true_positives], axis=-1)
    fp = np.concatenate([zeros, false_positives], axis=-1)
    total_fp, detected = fp[..., -1:], tp[..., -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        fp_per_scan = np.where(total_fp > 0, fp / total_fp * total_fp / scan_count, 0.0)
        sensitivity = np.where(detected > 0, tp / detected * detected / nodule_count, 0.0)
    return fp_per_scan, sensitivity


def _read_off(fp_per_scan: np.ndarray, sensitivity: np.ndarray, points) -> np.ndarray:
    return np.interp(np.asarray(points, dtype=np.float64), fp_per_scan, sensitivity)


def froc(
    marks: Marks,
    reference: Reference,
    bootstrap_samples: int = 0,
    seed: int = 0,
    max_marks: int = MAX_MARKS_PER_SCAN,
) -> FrocResult:
    """FROC curve, the seven sensitivities, CPM and (``bootstrap_samples > 0``) a seeded interval.

    Args:
        marks: the system's marks on the evaluated scans (rows of other scans already removed).
        reference: the evaluated scans and their findings. A scan without marks still counts,
            and its nodules are missed.
        bootstrap_samples: resamples of the scans for the interval (the official script: 1000).
        seed: seeds the resampling.
        max_marks: the per-scan cap (100 in LUNA16).
    """
    nodules, irrelevant, scan_count = reference.nodules, reference.irrelevant, len(reference.scans)
    if scan_count < 1:
        raise ValueError("scan_count must be at least 1: there is no scan to evaluate")
    for name, part in (("marks", marks), ("nodules", nodules), ("irrelevant", irrelevant)):
        if len(part.scan) and (part.scan.min() < 0 or part.scan.max() >= scan_count):
            raise ValueError(
                f"{name}: scan indices must lie in [0, {scan_count}); found "
                f"{part.scan.min()}..{part.scan.max()}"
            )
    if len(marks.probability) and not np.isfinite(marks.probability).all():
        raise ValueError("marks: probabilities must be finite")
    marks, capped = cap_marks(marks, scan_count, max_marks)
    entries, counts = _entries(marks, nodules, irrelevant, scan_count)
    order, ends = _threshold_order(entries.probability)
    label = entries.label[order]
    fp_per_scan, sensitivity = _curve(
        np.cumsum(label)[ends], np.cumsum(1.0 - label)[ends], scan_count, float(counts["nodules"])
    )
    if counts["nodules"] == 0:
        sensitivity = np.full_like(sensitivity, np.nan)
    at_points = _read_off(fp_per_scan, sensitivity, FP_PER_SCAN)
    result = FrocResult(
        fp_per_scan=FP_PER_SCAN,
        sensitivity=at_points,
        cpm=float(at_points.mean()),
        curve_fp_per_scan=fp_per_scan,
        curve_sensitivity=sensitivity,
        counts=FrocCounts(scans=scan_count, capped_marks=capped, **counts),
    )
    if bootstrap_samples > 0:
        result = FrocResult(
            **{**result.__dict__, "bootstrap": _bootstrap(entries, scan_count, bootstrap_samples, seed)}
        )
    return result


def cpm_resamples(
    marks: Marks,
    reference: Reference,
    samples: int = 1000,
    seed: int = 0,
    max_marks: int = MAX_MARKS_PER_SCAN,
) -> np.ndarray:
    """The CPM of ``samples`` bootstrap resamples of the scans, in draw order (NaN where a resample
    holds no nodule).

    The draws depend only on ``seed`` and the number of scans, so two systems scored on the same
    reference with the same seed are resampled alike: their CPMs pair up row by row, and the
    spread of a difference (or of a mean over seeds) comes out right.
    """
    marks, _ = cap_marks(marks, len(reference.scans), max_marks)
    entries, _ = _entries(marks, reference.nodules, reference.irrelevant, len(reference.scans))
    at_points, _ = _resampled(entries, len(reference.scans), samples, seed, band_x=None)
    return at_points.mean(axis=1)


def _resampled(
    entries: _Entries, scan_count: int, samples: int, seed: int, band_x: np.ndarray | None, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray | None]:
    """The seven sensitivities ``[samples, 7]`` (and the band ``[samples, len(band_x)]``) of each
    resample of the scans, NaN where no nodule was drawn; a resample's entries are weighted by
    its draw counts."""
    rng = np.random.default_rng(seed)
    order, ends = _threshold_order(entries.probability)
    scan, label = entries.scan[order], entries.label[order]
    at_points = np.empty((samples, len(FP_PER_SCAN)))
    band = None if band_x is None else np.empty((samples, len(band_x)))
    for first in range(0, samples, chunk):
        rows = min(chunk, samples - first)
        draws = rng.integers(0, scan_count, size=(rows, scan_count))
        weight = np.stack([np.bincount(row, minlength=scan_count) for row in draws]).astype(np.float64)
        entry_weight = weight[:, scan]
        true_positives = np.cumsum(entry_weight * label, axis=1)[:, ends]
        false_positives = np.cumsum(entry_weight * (1.0 - label), axis=1)[:, ends]
        nodules = weight @ entries.nodules_per_scan
        fp_per_scan, sensitivity = _curve(true_positives, false_positives, scan_count, nodules[:, None])
        for row in range(rows):
            if nodules[row] == 0:  # no nodule drawn: sensitivity is undefined
                at_points[first + row] = np.nan
                if band is not None:
                    band[first + row] = np.nan
                continue
            at_points[first + row] = _read_off(fp_per_scan[row], sensitivity[row], FP_PER_SCAN)
            if band is not None:
                band[first + row] = _read_off(fp_per_scan[row], sensitivity[row], band_x)
    return at_points, band


def _bootstrap(entries: _Entries, scan_count: int, samples: int, seed: int) -> Bootstrap:
    """The interval: order statistics of the resamples (as the official script)."""
    band_x = np.linspace(FP_PER_SCAN[0], FP_PER_SCAN[-1], BAND_POINTS)
    at_points, band = _resampled(entries, scan_count, samples, seed, band_x)
    defined = np.isfinite(at_points[:, 0])
    cpm = np.sort(at_points[defined].mean(axis=1))
    at_points, band = np.sort(at_points[defined], axis=0), np.sort(band[defined], axis=0)
    n = len(cpm)
    if n == 0:
        nan_band = np.full(BAND_POINTS, np.nan)
        return Bootstrap(
            samples,
            seed,
            (np.nan, np.nan),
            np.nan,
            np.full((len(FP_PER_SCAN), 2), np.nan),
            band_x,
            nan_band,
            nan_band,
            nan_band,
            samples,
        )
    low, high = int(np.floor(0.025 * n)), int(np.floor(0.975 * n))
    return Bootstrap(
        samples=samples,
        seed=seed,
        cpm_ci=(float(cpm[low]), float(cpm[high])),
        cpm_mean=float(cpm.mean()),
        sensitivity_ci=np.stack([at_points[low], at_points[high]], axis=1),
        fp_per_scan=band_x,
        sensitivity_mean=band.mean(axis=0),
        sensitivity_low=band[low],
        sensitivity_high=band[high],
        undefined=int((~defined).sum()),
    )
