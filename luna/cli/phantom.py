"""``python -m luna.phantom``: write phantom data in the layouts luna reads.

    python -m luna.phantom luna16 OUT_DIR [--series N] [--seed S] [--geometry luna16] ...
    python -m luna.phantom points OUT_DIR [--patients N] [--seed S]

``luna16`` writes a LUNA16 release (``subset*/<uid>.mhd/.raw`` and its CSVs;
``luna.luna16.phantom``), ``points`` a points CSV over NIfTI volumes (``luna.points.phantom``).
The folder must not exist; it appears complete or not at all.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from luna.cli.errors import run_command
from luna.luna16.phantom import PhantomSpec, generate_phantom
from luna.points.phantom import PointsPhantomSpec, generate_points_phantom


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m luna.phantom",
        description="Write phantom data in the layouts "
        "luna reads (a LUNA16 release, or a points CSV of NIfTI volumes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    luna16 = kinds.add_parser(
        "luna16",
        help="a LUNA16 release: subset*/<seriesuid>.mhd/.raw and its CSVs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    defaults = PhantomSpec()
    luna16.add_argument("out_dir", type=Path, help="folder to create (must not exist)")
    luna16.add_argument("--series", type=int, default=defaults.series, help="scans written to disk")
    luna16.add_argument("--seed", type=int, default=defaults.seed)
    luna16.add_argument(
        "--shape_irc",
        type=int,
        nargs=3,
        default=defaults.shape_irc,
        metavar=("I", "R", "C"),
        help="volume shape of the simple geometry; 150 512 512 is real size",
    )
    luna16.add_argument("--subsets", type=int, default=defaults.subsets)
    luna16.add_argument(
        "--missing_series",
        type=int,
        default=defaults.missing_series,
        help="series listed in the CSVs but not written",
    )
    luna16.add_argument("--noise_hu", type=float, default=defaults.noise_hu)
    luna16.add_argument(
        "--geometry",
        choices=("simple", "luna16"),
        default=defaults.geometry,
        help="simple: --shape_irc voxels of about 1 mm; luna16: LUNA16's spacings and nodule sizes",
    )
    luna16.add_argument(
        "--field_of_view_mm",
        type=float,
        nargs=3,
        default=defaults.field_of_view_mm,
        metavar=("I", "R", "C"),
        help="extent of a luna16-geometry scan",
    )
    points = kinds.add_parser(
        "points",
        help="a points CSV over NIfTI volumes, three kinds of finding",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    points.add_argument("out_dir", type=Path, help="folder to create (must not exist)")
    points.add_argument(
        "--patients",
        type=int,
        default=PointsPhantomSpec().patients,
        help="patients written (two volumes each)",
    )
    points.add_argument("--seed", type=int, default=PointsPhantomSpec().seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = vars(_parser().parse_args(argv))
    kind, out_dir = args.pop("kind"), args.pop("out_dir")
    spec_class = PhantomSpec if kind == "luna16" else PointsPhantomSpec
    names = {field.name for field in fields(spec_class)}
    spec = spec_class(
        **{
            name: tuple(value) if isinstance(value, list) else value
            for name, value in args.items()
            if name in names
        }
    )
    (generate_phantom if kind == "luna16" else generate_points_phantom)(out_dir, spec)
    return 0


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2)."""
    run_command(main)


if __name__ == "__main__":
    cli()
