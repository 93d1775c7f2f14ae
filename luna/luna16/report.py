"""The report of a LUNA16 evaluation: the console table, ``froc.json`` and ``froc.png``."""

from __future__ import annotations

from pathlib import Path

from luna.evaluation.froc import BAND_POINTS
from luna.io.files import write_json_atomic
from luna.luna16.scoring import SubmissionScore

INTERPOLATION = "linear interpolation of the FROC curve (np.interp) at each operating point"


def summary(evaluation: SubmissionScore) -> dict:
    """The ``froc.json`` record of an evaluation."""
    result = evaluation.result
    counts = result.counts
    record = {
        "fp_per_scan": list(result.fp_per_scan),
        "sensitivity": result.sensitivity.tolist(),
        "cpm": result.cpm,
        "cpm_ci": list(result.bootstrap.cpm_ci) if result.bootstrap else None,
        "scans": counts.scans,
        "nodules": counts.nodules,
        "detected": counts.detected,
        "false_positives": counts.false_positives,
        "irrelevant_marks": counts.irrelevant_marks,
        "unevaluated_rows": evaluation.unevaluated_rows,
        "double_detections": counts.double_detections,
        "capped_marks": counts.capped_marks,
        "scans_from": evaluation.scans_from,
        "irrelevant_findings_used": evaluation.irrelevant_findings,
        "interpolation": INTERPOLATION,
    }
    if result.bootstrap:
        band = result.bootstrap
        record["bootstrap"] = {
            "samples": band.samples,
            "seed": band.seed,
            "cpm_mean": band.cpm_mean,
            "sensitivity_ci": band.sensitivity_ci.tolist(),
            "undefined_samples": band.undefined,
            "band_points": BAND_POINTS,
        }
    return record


def table(evaluation: SubmissionScore, source: str) -> str:
    """The human-readable report: one line per operating point, then CPM and the counts."""
    result, counts = evaluation.result, evaluation.result.counts
    band = result.bootstrap
    lines = [
        f"FROC of {source} over {counts.scans} scans ({evaluation.scans_from})",
        "",
        "  FP/scan  sensitivity" + ("  95 % CI" if band else ""),
    ]
    for k, (x, y) in enumerate(zip(result.fp_per_scan, result.sensitivity, strict=True)):
        interval = f"  {band.sensitivity_ci[k][0]:.3f}-{band.sensitivity_ci[k][1]:.3f}" if band else ""
        lines.append(f"  {x:>7g}  {y:>11.3f}{interval}")
    cpm = f"CPM {result.cpm:.3f}"
    if band:
        cpm += (
            f" (95 % CI {band.cpm_ci[0]:.3f}-{band.cpm_ci[1]:.3f}, {band.samples} bootstrap resamples of the "
            f"scans, seed {band.seed})"
        )
    lines += [
        "",
        cpm,
        f"nodules detected: {counts.detected} of {counts.nodules}; false positives: "
        f"{counts.false_positives}; "
        f"marks ignored on irrelevant findings: {counts.irrelevant_marks}; double detections: "
        f"{counts.double_detections}; marks over the 100-per-scan cap: {counts.capped_marks}; rows of "
        f"unevaluated series: {evaluation.unevaluated_rows}",
    ]
    return "\n".join(lines)


def write_froc_report(evaluation: SubmissionScore, output: Path, title: str) -> tuple[Path, Path]:
    """Write ``froc.json`` and ``froc.png`` into ``output``."""
    from luna.evaluation.figures import froc_figure, save_png  # matplotlib only when a figure is written

    output.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output / "froc.json", output / "froc.png"
    write_json_atomic(json_path, summary(evaluation), indent=1)
    figure = froc_figure(evaluation.result, title)
    save_png(figure, png_path, dpi=120)
    return json_path, png_path
