"""``python -m luna.evaluate PREDICTIONS.csv --data_dir DIR``: FROC and CPM of a LUNA16 submission.

Scores a predictions CSV (``seriesuid,coordX,coordY,coordZ,probability``, e.g. from
``python -m luna.fit predict`` or the merged cross-validation) exactly as LUNA16's official
``noduleCADEvaluationLUNA16.py`` does, in seconds instead of minutes, and with a seeded bootstrap:

    python -m luna.evaluate logs/crossval/predictions.csv --data_dir /data/LUNA16 --output logs/crossval

prints the sensitivity at 1/8 ... 8 false positives per scan, CPM and its 95 % interval, and
writes ``OUTPUT/froc.json`` and ``OUTPUT/froc.png``. The evaluated scans are those ``luna.fit
predict`` recorded beside the predictions (``PREDICTIONS.json``: a validation split, a fold), else
``DIR/seriesuids.csv`` when present (as in the release), otherwise the scans under
``DIR/subset*/``; ``--subsets 0,3`` keeps only those folders' scans (one cross-validation fold), and
``--series FILE`` evaluates the scans listed in FILE instead.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from luna.cli.arguments import integer_list
from luna.cli.errors import run_command
from luna.io.files import writable_problem
from luna.luna16.report import table, write_froc_report
from luna.luna16.scoring import (
    evaluate_submission,
    predicted_data_dir,
    predicted_scans,
    prediction_record,
    read_predictions,
)

log = logging.getLogger("luna.evaluate")  # not __name__: this module runs as __main__

DESCRIPTION = (
    "FROC and CPM of a LUNA16 submission, scored as LUNA16's official evaluation script does, with a "
    "seeded bootstrap interval. Writes froc.json and froc.png."
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m luna.evaluate",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("predictions", type=Path, help="CSV with seriesuid,coordX,coordY,coordZ,probability")
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="LUNA16 folder: annotations.csv, annotations_excluded.csv, seriesuids.csv or subset*/ "
        "(none given: the folder luna.fit predict recorded beside the predictions)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where froc.json and froc.png go (none given: the predictions' folder)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% interval (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--subsets",
        type=integer_list("subsets"),
        default=None,
        help="evaluate only the scans of these subsets, e.g. 0,3",
    )
    parser.add_argument(
        "--series",
        type=Path,
        default=None,
        help="evaluate only the scans listed in this file, one uid "
        "per line (e.g. a validation split), instead of DIR/seriesuids.csv or DIR/subset*/",
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap={args.bootstrap}: must be 0 or more")
    if not args.predictions.is_file():
        raise FileNotFoundError(f"the predictions file {args.predictions} does not exist")
    data_dir = args.data_dir or predicted_data_dir(args.predictions)
    if data_dir is None:
        raise ValueError(
            f"--data_dir is required: {args.predictions.with_suffix('.json')} (written by luna.fit "
            "predict) does not say which data folder the predictions are about"
        )
    output = args.output or args.predictions.parent
    problem = writable_problem(output)
    if problem:
        raise PermissionError(f"--output {output}: cannot write froc.json and froc.png there: {problem}")
    submission = read_predictions(args.predictions)
    recorded = prediction_record(args.predictions).get("rows")
    if isinstance(recorded, int) and recorded != len(submission):
        log.warning(
            "%s holds %d rows, but %d were written by the run that made it (%s): the file changed since",
            args.predictions,
            len(submission),
            recorded,
            args.predictions.with_suffix(".json"),
        )
    predicted = predicted_scans(args.predictions) if args.subsets is None else None
    evaluation = evaluate_submission(
        submission, data_dir, args.subsets, args.bootstrap, args.seed, args.series, predicted
    )
    if evaluation.result.counts.nodules == 0:
        raise ValueError(
            f"the {evaluation.result.counts.scans} evaluated scans hold no nodule of "
            f"{data_dir / 'annotations.csv'}: sensitivity and CPM are undefined"
        )
    json_path, png_path = write_froc_report(
        evaluation, output, f"FROC of {Path(*args.predictions.resolve().parts[-3:])}"
    )
    print(table(evaluation, str(args.predictions)))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2)."""
    run_command(main)


if __name__ == "__main__":
    cli()
