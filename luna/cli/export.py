"""``python -m luna.export``: a trained model out of the training stack, as a bundle.

    python -m luna.export --ckpt_path logs/version_0/checkpoints/last.ckpt --output bundle/
    python -m luna.export --ckpt_path A.ckpt --ensemble B.ckpt C.ckpt --output bundle/   # their mean
    python -m luna.export --ckpt_path SEG.ckpt --output seg_bundle/                      # a segmentation

Writes MONAI's bundle layout (``luna.inference.bundle``): the network as TorchScript (and ONNX
where it exports), what it takes (views, spacings, intensities), its classes, threshold and
prior correction, its training configuration and every file's checksum. ``python -m luna.infer``
runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from luna.cli.errors import run_command
from luna.io.files import writable_problem

DESCRIPTION = (
    "Export a luna checkpoint (a classifier, an ensemble, or a segmentation) as a bundle luna.infer runs."
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m luna.export",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--ckpt_path", type=Path, required=True, help="the checkpoint (a run's checkpoints/last.ckpt)"
    )
    parser.add_argument("--output", type=Path, required=True, help="the bundle's folder")
    parser.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        default=[],
        help="more checkpoints of the same model: the bundle gives their mean probability",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the decision threshold recorded in the bundle (none given: the checkpoint's, or 0.5)",
    )
    parser.add_argument(
        "--prior_correction",
        action="store_true",
        help="probabilities at the natural class ratio of "
        "the training data (luna.fit's evaluation.prior_correction)",
    )
    parser.add_argument(
        "--tta_flips", type=str, default=None, help="test-time flips, e.g. '[[], [0], [1], [2]]'"
    )
    args = parser.parse_args(argv)
    problem = writable_problem(args.output)
    if problem:
        raise PermissionError(f"--output {args.output}: cannot write the bundle there: {problem}")
    from luna.inference.export import export_bundle  # after the cheap checks: this imports the training stack
    from luna.training.evaluation import check_flips

    flips = None if args.tta_flips is None else [list(f) for f in check_flips(_flips(args.tta_flips))]
    bundle = export_bundle(
        args.ckpt_path, args.output, args.ensemble, args.threshold, args.prior_correction, flips
    )
    print(f"wrote {bundle}")
    return 0


def _flips(text: str) -> list[list[int]]:
    import json

    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(
            f"--tta_flips={text!r}: expected a list of axis lists, e.g. '[[], [0], [1], [2]]'"
        ) from None


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2)."""
    run_command(main)


if __name__ == "__main__":
    cli()
