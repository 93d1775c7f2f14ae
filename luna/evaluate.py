"""``python -m luna.evaluate PREDICTIONS.csv --data_dir DIR``: FROC and CPM of a LUNA16 submission.

Scores a predictions CSV (``seriesuid,coordX,coordY,coordZ,probability``, e.g. from
``python -m luna.fit predict`` or the merged cross-validation) exactly as LUNA16's official
``noduleCADEvaluationLUNA16.py`` does, in seconds instead of minutes, and with a seeded bootstrap:

    python -m luna.evaluate logs/crossval/predictions.csv --data_dir /data/LUNA16 --output logs/crossval

prints the sensitivity at 1/8 ... 8 false positives per scan, CPM and its 95 % interval, and
writes ``OUTPUT/froc.json`` and ``OUTPUT/froc.png``. The evaluated scans are ``DIR/seriesuids.csv``
when present (as in the release), otherwise the scans under ``DIR/subset*/``; ``--subsets 0,3``
keeps only those folders' scans (one cross-validation fold), and ``--series FILE`` evaluates the scans
listed in FILE instead (e.g. a validation split).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from luna.csvfile import CsvFormatError
from luna.evaluation.files import Evaluation, evaluate_submission
from luna.evaluation.froc import BAND_POINTS

INTERPOLATION = "linear interpolation of the FROC curve (np.interp) at each operating point"


def summary(evaluation: Evaluation) -> dict:
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


def table(evaluation: Evaluation, source: str) -> str:
    """The human-readable report: one line per operating point, then CPM and the counts."""
    result, counts = evaluation.result, evaluation.result.counts
    band = result.bootstrap
    lines = [f"FROC of {source} over {counts.scans} scans ({evaluation.scans_from})", "",
             "  FP/scan  sensitivity" + ("  95 % CI" if band else "")]
    for k, (x, y) in enumerate(zip(result.fp_per_scan, result.sensitivity)):
        interval = f"  {band.sensitivity_ci[k][0]:.3f}-{band.sensitivity_ci[k][1]:.3f}" if band else ""
        lines.append(f"  {x:>7g}  {y:>11.3f}{interval}")
    cpm = f"CPM {result.cpm:.3f}"
    if band:
        cpm += f" (95 % CI {band.cpm_ci[0]:.3f}-{band.cpm_ci[1]:.3f}, {band.samples} bootstrap resamples of the scans, seed {band.seed})"
    lines += ["", cpm,
              f"nodules detected: {counts.detected} of {counts.nodules}; false positives: {counts.false_positives}; "
              f"marks ignored on irrelevant findings: {counts.irrelevant_marks}; double detections: "
              f"{counts.double_detections}; marks over the 100-per-scan cap: {counts.capped_marks}; rows of "
              f"unevaluated series: {evaluation.unevaluated_rows}"]
    return "\n".join(lines)


def write_report(evaluation: Evaluation, output: Path, title: str) -> tuple[Path, Path]:
    """Write ``froc.json`` and ``froc.png`` into ``output``."""
    from luna.figures import froc_figure  # matplotlib only when a figure is written

    output.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output / "froc.json", output / "froc.png"
    json_path.write_text(json.dumps(summary(evaluation), indent=1) + "\n")
    froc_figure(evaluation.result, title).savefig(png_path, dpi=120)
    return json_path, png_path


def _subsets(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected subset numbers like 0,3 but got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m luna.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="CSV with seriesuid,coordX,coordY,coordZ,probability")
    parser.add_argument("--data_dir", type=Path, required=True,
                        help="LUNA16 folder: annotations.csv, annotations_excluded.csv, seriesuids.csv or subset*/")
    parser.add_argument("--output", type=Path, default=None, help="where froc.json and froc.png go "
                        "(default: the predictions' folder)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% interval (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--subsets", type=_subsets, default=None, help="evaluate only the scans of these subsets, e.g. 0,3")
    parser.add_argument("--series", type=Path, default=None, help="evaluate only the scans listed in this file, one uid "
                        "per line (e.g. a validation split), instead of DIR/seriesuids.csv or DIR/subset*/")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap={args.bootstrap}: must be 0 or more")
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        evaluation = evaluate_submission(args.predictions, args.data_dir, args.subsets, args.bootstrap, args.seed, args.series)
    except (FileNotFoundError, CsvFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if evaluation.result.counts.nodules == 0:
        print(f"error: the {evaluation.result.counts.scans} evaluated scans hold no nodule of "
              f"{args.data_dir / 'annotations.csv'}: sensitivity and CPM are undefined", file=sys.stderr)
        return 2
    output = args.output or args.predictions.parent
    json_path, png_path = write_report(evaluation, output, f"FROC: {args.predictions.name}")
    print(table(evaluation, str(args.predictions)))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
