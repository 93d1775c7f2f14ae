"""FROC and CPM: every scoring rule of LUNA16's official script on hand-built cases, and a literal
scalar transcription of the rules (LUNA16.md) against the vectorised code on random cases."""

import math

import numpy as np
import pytest

from luna.evaluation.froc import FP_PER_SCAN, Findings, Marks, Reference, cap_marks
from luna.evaluation.froc import froc as froc_of


def findings(*rows):
    """rows of (scan, x, y, z, diameter)."""
    array = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return Findings(array[:, 0].astype(np.int64), array[:, 1:4], array[:, 4])


def marks(*rows):
    """rows of (scan, x, y, z, probability)."""
    array = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return Marks(array[:, 0].astype(np.int64), array[:, 1:4], array[:, 4])


NONE = Findings.empty()


def froc(marks, nodules, irrelevant, scan_count, **kwargs):
    return froc_of(marks, Reference([f"scan{k}" for k in range(scan_count)], nodules, irrelevant), **kwargs)


def test_a_mark_at_exactly_the_radius_misses_and_just_inside_hits():
    nodule = findings((0, 0, 0, 0, 10))
    at_radius = froc(marks((0, 5, 0, 0, 0.9)), nodule, NONE, 1)
    assert at_radius.counts.detected == 0 and at_radius.counts.false_positives == 1
    inside = froc(marks((0, 4.999, 0, 0, 0.9)), nodule, NONE, 1)
    assert inside.counts.detected == 1 and inside.counts.false_positives == 0
    assert inside.cpm == 1.0  # no false positive at all: the final sensitivity everywhere


def test_double_hits_take_the_highest_probability_and_are_not_false_positives():
    nodule = findings((0, 0, 0, 0, 10))
    result = froc(marks((0, 1, 0, 0, 0.3), (0, 0, 1, 0, 0.8), (0, 30, 0, 0, 0.5)), nodule, NONE, 1)
    assert (result.counts.detected, result.counts.double_detections, result.counts.false_positives) == (
        1,
        1,
        1,
    )
    # the nodule enters at 0.8, above the false positive at 0.5: sensitivity 1 before any false positive
    assert result.sensitivity.tolist() == [1.0] * 7


def test_one_mark_may_detect_two_nodules():
    nodules = findings((0, 0, 0, 0, 10), (0, 2, 0, 0, 10))
    result = froc(marks((0, 1, 0, 0, 0.7)), nodules, NONE, 1)
    assert result.counts.detected == 2 and result.counts.false_positives == 0


def test_marks_on_irrelevant_findings_are_ignored_unless_they_hit_a_nodule():
    nodule = findings((0, 0, 0, 0, 6))
    irrelevant = findings((0, 1, 0, 0, -1), (0, 50, 0, 0, 4))  # -1: unknown size, 10 mm
    result = froc(
        marks((0, 0.5, 0, 0, 0.9), (0, 5.5, 0, 0, 0.8), (0, 51, 0, 0, 0.7), (0, 90, 0, 0, 0.6)),
        nodule,
        irrelevant,
        1,
    )
    # 0.5 mm: nodule hit (not irrelevant); 5.5 mm: outside the 3 mm nodule but within 5 mm of the
    # unknown-size finding; 51: within 2 mm of the 4 mm finding; 90: a false positive
    assert (result.counts.detected, result.counts.irrelevant_marks, result.counts.false_positives) == (
        1,
        2,
        1,
    )


def test_without_irrelevant_findings_those_marks_become_false_positives():
    nodule = findings((0, 0, 0, 0, 6))
    ranked = marks((0, 1, 0, 0, 0.5), *[(0, 40 + k, 0, 0, 0.9) for k in range(3)])
    irrelevant = findings(*[(0, 40 + k, 0, 0, 1) for k in range(3)])
    assert froc(ranked, nodule, irrelevant, 8).cpm == 1.0
    assert froc(ranked, nodule, NONE, 8).cpm < 1.0


def test_the_cap_keeps_marks_strictly_above_the_101st_probability():
    uniform = marks(*[(0, k, 0, 0, 1.0) for k in range(101)])
    assert len(cap_marks(uniform, 1)[0].scan) == 0  # 101 ties at the top: none survives
    distinct = marks(*[(0, k, 0, 0, k / 200) for k in range(150)])
    kept, dropped = cap_marks(distinct, 1)
    assert dropped == 50 and kept.probability.min() == 50 / 200
    tied = marks(*[(0, k, 0, 0, 0.5 if k < 10 else 0.9) for k in range(105)])  # 95 at 0.9, 10 at 0.5
    assert len(cap_marks(tied, 1)[0].scan) == 95
    hundred = marks(*[(0, k, 0, 0, 1.0) for k in range(100)])
    assert len(cap_marks(hundred, 1)[0].scan) == 100  # at the cap: untouched
    other_scan = marks(*[(0, k, 0, 0, 1.0) for k in range(101)], (1, 0, 0, 0, 1.0))
    assert cap_marks(other_scan, 2)[0].scan.tolist() == [1]


def test_missed_nodules_and_scans_without_marks_count_in_the_denominators():
    nodules = findings((0, 0, 0, 0, 10), (1, 0, 0, 0, 10))  # scan 1 has no mark at all
    result = froc(marks((0, 0, 0, 0, 0.9), (0, 40, 0, 0, 0.1)), nodules, NONE, 4)
    assert result.counts.nodules == 2 and result.counts.detected == 1
    assert result.curve_fp_per_scan[-1] == 0.25  # one false positive over four scans
    assert result.sensitivity.tolist() == [0.5] * 7


def test_no_false_positives_at_all_reads_the_final_sensitivity_everywhere():
    nodules = findings((0, 0, 0, 0, 10), (0, 40, 0, 0, 10), (0, 80, 0, 0, 10))
    result = froc(marks((0, 0, 0, 0, 0.2), (0, 40, 0, 0, 0.9)), nodules, NONE, 2)
    assert result.counts.false_positives == 0
    assert np.all(result.curve_fp_per_scan == 0)
    assert result.sensitivity == pytest.approx([2 / 3] * 7)


def test_a_step_exactly_at_an_operating_point_is_read_at_its_top():
    # 8 scans: the first false positive sits at exactly 1/8 FP per scan, with a nodule tied to it
    nodules = findings((0, 0, 0, 0, 10), (1, 0, 0, 0, 10))
    result = froc(marks((0, 0, 0, 0, 0.9), (2, 50, 0, 0, 0.5), (1, 0, 0, 0, 0.5)), nodules, NONE, 8)
    assert result.sensitivity[0] == 1.0  # (0.125, 0.5) and (0.125, 1.0): np.interp takes the last


def test_no_detection_gives_zero_and_no_nodule_gives_an_undefined_cpm():
    missed = froc(marks((0, 50, 0, 0, 0.5)), findings((0, 0, 0, 0, 10)), NONE, 1)
    assert missed.cpm == 0.0 and missed.counts.detected == 0
    assert math.isnan(froc(marks((0, 50, 0, 0, 0.5)), NONE, NONE, 1).cpm)
    empty = froc(marks(), findings((0, 0, 0, 0, 10)), NONE, 3)
    assert empty.cpm == 0.0 and empty.counts.nodules == 1


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="scan indices"):
        froc(marks((3, 0, 0, 0, 0.5)), NONE, NONE, 2)
    with pytest.raises(ValueError, match="finite"):
        froc(marks((0, 0, 0, 0, float("nan"))), NONE, NONE, 1)
    with pytest.raises(ValueError, match="at least 1"):
        froc(marks(), NONE, NONE, 0)


# ------------------------------------------------------------------ a literal transcription of the rules


def reference_froc(mark_rows, nodule_rows, irrelevant_rows, scan_count):
    """LUNA16.md's rules, one loop at a time; returns the seven sensitivities."""
    entries, nodule_total = [], 0
    for scan in range(scan_count):
        scan_marks = [m for m in mark_rows if m[0] == scan]
        if len(scan_marks) > 100:
            cut = sorted((m[4] for m in scan_marks), reverse=True)[100]
            scan_marks = [m for m in scan_marks if m[4] > cut]
        pool = list(range(len(scan_marks)))

        def hits(finding, scan_marks=scan_marks):
            diameter = finding[4] if finding[4] >= 0 else 10.0
            return [
                k
                for k, m in enumerate(scan_marks)
                if sum((finding[a] - m[a]) ** 2 for a in (1, 2, 3)) < (diameter / 2) ** 2
            ]

        for nodule in (n for n in nodule_rows if n[0] == scan):
            nodule_total += 1
            matched = hits(nodule)
            if matched:
                entries.append((1, max(scan_marks[k][4] for k in matched)))
                pool = [k for k in pool if k not in matched]
        for finding in (f for f in irrelevant_rows if f[0] == scan):
            pool = [k for k in pool if k not in hits(finding)]
        entries += [(0, scan_marks[k][4]) for k in pool]
    thresholds = sorted({p for _, p in entries}, reverse=True)
    fp_total = sum(1 for label, _ in entries if label == 0)
    curve_x, curve_y = [0.0], [0.0]
    for threshold in thresholds:
        curve_x.append(sum(1 for label, p in entries if label == 0 and p >= threshold) / scan_count)
        curve_y.append(sum(1 for label, p in entries if label == 1 and p >= threshold) / nodule_total)
    if fp_total == 0:
        curve_x = [0.0] * len(curve_x)
    return np.interp(FP_PER_SCAN, curve_x, curve_y)


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_scoring_equals_the_literal_rules(seed):
    rng = np.random.default_rng(seed)
    scan_count = int(rng.choice([1, 3, 8, 16, 25]))
    nodule_rows = [
        (s, *rng.uniform(-40, 40, 3), rng.uniform(3, 30))
        for s in range(scan_count)
        for _ in range(rng.integers(0, 4))
    ]
    irrelevant_rows = [
        (s, *rng.uniform(-40, 40, 3), rng.choice([-1.0, rng.uniform(1, 8)]))
        for s in range(scan_count)
        for _ in range(rng.integers(0, 4))
    ]
    mark_rows = []
    for s in range(scan_count):
        for _ in range(rng.integers(0, 130)):
            near = [f for f in nodule_rows + irrelevant_rows if f[0] == s]
            if near and rng.random() < 0.4:
                f = near[rng.integers(len(near))]
                center = np.array(f[1:4]) + rng.normal(0, 3, 3)
            else:
                center = rng.uniform(-40, 40, 3)
            mark_rows.append((s, *center, round(float(rng.random()), int(rng.integers(1, 4)))))
    if not nodule_rows:
        nodule_rows = [(0, 0.0, 0.0, 0.0, 10.0)]
    result = froc(marks(*mark_rows), findings(*nodule_rows), findings(*irrelevant_rows), scan_count)
    expected = reference_froc(mark_rows, nodule_rows, irrelevant_rows, scan_count)
    assert result.sensitivity == pytest.approx(expected, abs=1e-9)
    assert result.cpm == pytest.approx(expected.mean(), abs=1e-9)


def test_the_bootstrap_is_seeded_and_brackets_the_cpm():
    rng = np.random.default_rng(0)
    scan_count = 40
    nodule_rows = [(s, 0.0, 0.0, 0.0, 10.0) for s in range(scan_count)]
    mark_rows = [(s, *rng.normal(0, 3, 3), rng.random()) for s in range(scan_count)]
    mark_rows += [(s, 60.0 + k, 0.0, 0.0, rng.random()) for s in range(scan_count) for k in range(5)]
    args = (marks(*mark_rows), findings(*nodule_rows), NONE, scan_count)
    first, again, other = (
        froc(*args, bootstrap_samples=300, seed=1),
        froc(*args, bootstrap_samples=300, seed=1),
        froc(*args, bootstrap_samples=300, seed=2),
    )
    assert (
        first.bootstrap.cpm_ci == again.bootstrap.cpm_ci
        and first.bootstrap.cpm_mean == again.bootstrap.cpm_mean
    )
    assert first.bootstrap.cpm_mean != other.bootstrap.cpm_mean
    low, high = first.bootstrap.cpm_ci
    assert low < first.cpm < high and high - low < 0.3
    band = first.bootstrap
    assert band.fp_per_scan[0] == 0.125 and band.fp_per_scan[-1] == 8 and len(band.fp_per_scan) == 10_000
    assert np.all(band.sensitivity_low <= band.sensitivity_high)
    assert froc(*args).bootstrap is None
