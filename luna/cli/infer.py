"""``python -m luna.infer``: an exported model on new volumes, without the training stack.

    python -m luna.infer BUNDLE --points POINTS.csv --output OUT.csv     # image,coordX,coordY,coordZ
    python -m luna.infer BUNDLE --point scan.nii.gz -41.2 10.5 -120 --output OUT.csv
    python -m luna.infer BUNDLE --segmentation SEG_BUNDLE --scans a.nii.gz b.mhd --output OUT.csv
    python -m luna.infer BUNDLE --points POINTS.csv --saliency maps/      # where the model looks

``BUNDLE`` is written by ``python -m luna.export``. Points give one row each (the image, the point,
one probability per class, as ``luna.fit predict`` writes them); whole scans give one row per
finding (``seriesuid,coordX,coordY,coordZ,probability``, as ``luna.detect``). In Python:
``luna.infer.load(BUNDLE)(volume, points)``. A point outside its volume is named and skipped, the
others go on (exit status 1 at the end). This command imports torch, never Lightning.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path

import numpy as np

from luna.cli.arguments import positive_int
from luna.cli.errors import run_command

log = logging.getLogger("luna.infer")  # not __name__: this module runs as __main__
DESCRIPTION = (
    "Run an exported luna model (python -m luna.export) on points of new volumes, or on whole scans."
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m luna.infer",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("bundle", type=Path, help="the classifier's bundle (python -m luna.export)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--points",
        type=Path,
        help="a CSV with image,coordX,coordY,coordZ (image: a volume file, "
        "relative to the CSV's folder or absolute)",
    )
    what.add_argument(
        "--point",
        nargs=4,
        action="append",
        metavar=("FILE", "X", "Y", "Z"),
        help="one point of one volume, in millimetres (repeatable)",
    )
    what.add_argument(
        "--scans", type=Path, nargs="+", help="whole scans: their findings (needs --segmentation)"
    )
    parser.add_argument(
        "--segmentation", type=Path, default=None, help="with --scans: the segmentation's bundle"
    )
    parser.add_argument(
        "--max_candidates", type=positive_int, default=1000, help="with --scans: as luna.detect's"
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("infer.csv"), help="the CSV to write")
    parser.add_argument(
        "--saliency",
        type=Path,
        default=None,
        help="also write, per point, where the model looks: "
        "a NIfTI map in the crop's physical frame and a PNG of its three planes",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    return parser


def read_points(args: argparse.Namespace) -> list[tuple[str, Path, np.ndarray, str]]:
    """``[(image as given, its file, xyz, where it was given)]`` of ``--points`` or ``--point``."""
    if args.point:
        points = []
        for number, (image, *xyz) in enumerate(args.point, start=1):
            try:
                center = np.array([float(value) for value in xyz])
            except ValueError:
                raise ValueError(f"--point #{number}: {' '.join(xyz)} are not three numbers") from None
            points.append((image, Path(image), center, f"--point #{number}"))
        return points
    from luna.io.csvfile import read_columns

    columns = read_columns(args.points, ("image", "coordX", "coordY", "coordZ"), "points CSV")
    return [
        (image, args.points.parent / image, xyz, f"{args.points}, line {line}")
        for image, xyz, line in zip(columns.text("image"), columns.xyz(), columns.line_numbers, strict=True)
    ]


def infer_points(args: argparse.Namespace) -> int:
    """Score every point, one volume at a time; rows in the order given."""
    from luna.data.volume import Geometry, ScanReadError, Volume
    from luna.inference.predictor import PointClassifier
    from luna.io.csvfile import XYZ_COLUMNS, probability_columns
    from luna.io.files import write_text_atomic

    predictor = PointClassifier.of(args.bundle, args.device)
    points = read_points(args)
    probabilities: dict[int, np.ndarray] = {}
    failed = 0
    by_file: dict[Path, list[int]] = {}
    for k, (_, file, _, _) in enumerate(points):
        by_file.setdefault(file, []).append(k)
    for file, rows in by_file.items():
        try:
            scan = Volume.read(file, window=None)
        except ScanReadError as error:
            log.error("%s: %s", points[rows[0]][3], error)
            failed += len(rows)
            continue
        grid = Geometry(scan.voxels.shape, scan.origin_xyz, scan.spacing_xyz, scan.direction)
        _, inside = grid.inside(np.array([points[k][2] for k in rows]))
        for k, kept in zip(rows, inside, strict=True):
            if not kept:
                log.error(
                    "%s: the point %s mm lies outside %s: skipped", points[k][3], points[k][2].tolist(), file
                )
                failed += 1
        kept_rows = [k for k, kept in zip(rows, inside, strict=True) if kept]
        if kept_rows:
            found = predictor(scan, np.array([points[k][2] for k in kept_rows]))
            probabilities.update(zip(kept_rows, found, strict=True))
            if args.saliency is not None:
                from luna.inference.saliency import write_saliency

                write_saliency(
                    predictor, scan, [(points[k][0], points[k][2]) for k in kept_rows], args.saliency
                )
    names = predictor.info.class_names
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image", *XYZ_COLUMNS, *probability_columns(names)])
    for k, (image, _, xyz, _) in enumerate(points):
        if k in probabilities:
            values = probabilities[k][1:] if len(names) == 2 else probabilities[k]
            writer.writerow([image, *map(repr, xyz.tolist()), *map(repr, values.astype(float).tolist())])
    write_text_atomic(args.output, text.getvalue())
    log.info("infer: %d of %d points scored, written to %s", len(probabilities), len(points), args.output)
    return 1 if failed else 0


def infer_scans(args: argparse.Namespace) -> int:
    """The findings of whole scans: a segmentation bundle and this classifier bundle."""
    from luna.data.volume import ScanReadError
    from luna.detection.output import DetectionsWriter
    from luna.detection.pipeline import CropSettingsError, Detector
    from luna.detection.scans import volume_files
    from luna.inference.predictor import PointClassifier, ScanSegmenter

    if args.segmentation is None:
        raise ValueError("--scans needs --segmentation SEG_BUNDLE: the model that finds candidates in a scan")
    segmenter = ScanSegmenter.of(args.segmentation, args.device)
    classifier = PointClassifier.of(args.bundle, args.device)
    detector = Detector(
        segmenter.stage,
        classifier.stage,
        threshold=segmenter.threshold,
        max_candidates=args.max_candidates,
        device=segmenter.device,
    )
    writer = DetectionsWriter(args.output, malignancy=False)
    for image_id, path in volume_files(args.scans):
        try:
            findings, seconds = detector.detect(path)
        except (ScanReadError, CropSettingsError) as error:
            log.error("scan %s not detected: %s", image_id, error)
            writer.fail(image_id, str(error))
            continue
        writer.add(image_id, findings, seconds)
        log.info("scan %s: %d findings (%.1f s)", image_id, len(findings), seconds)
    writer.close(
        {
            "classifier": str(args.bundle.resolve()),
            "segmentation": str(args.segmentation.resolve()),
            "data_dir": None,
        }
    )
    return 1 if writer.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 when a point or scan could not be scored)."""
    args = parser().parse_args(argv)
    return infer_scans(args) if args.scans else infer_points(args)


def cli() -> None:
    """``main`` with a user's mistakes (a damaged bundle, a missing file) in one line (exit status 2)."""
    run_command(main)


if __name__ == "__main__":
    cli()
