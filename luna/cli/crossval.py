"""``python -m luna.crossval``: LUNA16's ten-fold cross-validation (``luna.experiments.crossval``).

    python -m luna.crossval --config configs/luna16.yaml --data.data_dir=/data/LUNA16 --output logs/crossval
    python -m luna.crossval --folds 0,3 ...          # only some folds (the others can run later)
    python -m luna.crossval --merge_only --output DIR   # score what the folds have predicted so far
    python -m luna.crossval --ensemble --output DIR --data.data_dir=/data/other --data.eval_images=all
                                                     # predict other data with all fold models together
    python -m luna.crossval --detect --data.data_dir=/data/LUNA16 --output logs/crossval
                                                     # the whole detection: both stages per fold, one CPM

Every other argument goes to ``python -m luna.fit`` unchanged. Rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import subprocess
from importlib import resources
from pathlib import Path

from luna.cli.arguments import integer_list
from luna.cli.errors import run_command
from luna.experiments.crossval import FOLDS, predict_with_ensemble, run_detection_fold, run_fold, score

SEGMENT_CONFIG = resources.files("luna.configs") / "luna16_segment.yaml"

DESCRIPTION = (
    "LUNA16's ten-fold cross-validation: each fold trains on nine subsets and predicts the tenth; "
    "the predictions are merged and scored once (FROC, CPM). Resumable; --ensemble predicts with all folds."
)


class FoldFailed(RuntimeError):
    """A fold's ``luna.fit`` run failed; rerunning the command resumes it."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m luna.crossval",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Every other argument is passed to python -m luna.fit.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--output", type=Path, default=Path("logs/crossval"), help="folder of the folds and the merge"
    )
    parser.add_argument(
        "--folds",
        type=integer_list("folds", allowed=FOLDS),
        default=list(FOLDS),
        help="folds to run, e.g. 0,3",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples of the merged CPM interval"
    )
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--merge_only", action="store_true", help="only merge and score the folds' predictions"
    )
    parser.add_argument("--no_merge", action="store_true", help="only run the folds (a SLURM array task)")
    parser.add_argument(
        "--detect",
        action="store_true",
        help="the detection track as well: per fold, also train "
        "the segmentation and run luna.detect on the held-out subset; merged into one submission",
    )
    parser.add_argument(
        "--segmentation_config",
        type=Path,
        default=Path(str(SEGMENT_CONFIG)),
        help="with --detect: the segmentation's config (the other arguments apply to both stages)",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="predict with every trained fold's model at once "
        "(the mean probability) on the data the other arguments give; nothing is trained",
    )
    args, fit_args = parser.parse_known_args(argv)
    try:
        if args.ensemble:
            print(f"wrote {predict_with_ensemble(args.output, fit_args)}")
            return 0
        if not args.merge_only:
            for fold in sorted(set(args.folds)):
                if args.detect:
                    run_detection_fold(fold, args.output, fit_args, args.segmentation_config)
                else:
                    run_fold(fold, args.output, fit_args)
    except subprocess.CalledProcessError as error:
        raise FoldFailed(
            f"{' '.join(error.cmd[1:4])} failed with exit status {error.returncode}; rerun the same "
            "command to resume"
        ) from None
    if not args.no_merge:
        for track in ("candidates", "detection") if args.detect else ("candidates",):
            _, report = score(args.output, args.bootstrap, args.bootstrap_seed, track)
            print(report)
    return 0


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2)."""
    run_command(main, (FoldFailed,))


if __name__ == "__main__":
    cli()
