"""``python -m luna.detect``: from CT scans to their nodules, with a segmentation and a classifier.

    python -m luna.detect --data_dir /data/LUNA16 --segmentation SEG.ckpt --classifier CLS.ckpt --output OUT
    python -m luna.detect --data_dir DIR --subsets 8,9 ...               # some LUNA16 subsets
    python -m luna.detect --scans a.nii.gz b.mhd --segmentation ... --classifier ... [--malignancy MAL.ckpt]

Writes ``OUT/detections.csv`` (``seriesuid,coordX,coordY,coordZ,probability``, LUNA16's submission
format, plus ``malignancy`` with ``--malignancy``) and ``OUT/detections.json`` (the checkpoints,
scans and settings); ``python -m luna.evaluate OUT/detections.csv`` scores the detection track
when the data folder has ``annotations.csv``. No CSV is needed to detect. A scan that cannot be
read is named and skipped (exit status 1 at the end); the others are detected.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from luna.cli.arguments import integer_list, positive_int
from luna.cli.errors import run_command
from luna.data.volume import ScanReadError
from luna.detection.networks import load_trained, stage_of
from luna.detection.output import DetectionsWriter
from luna.detection.pipeline import CropSettingsError, Detector
from luna.detection.scans import luna16_scans, volume_files
from luna.io.files import writable_problem

log = logging.getLogger("luna.detect")  # not __name__: this module runs as __main__
DESCRIPTION = (
    "Find the nodules of CT scans: segment each scan, group the segmentation into candidates, classify "
    "them; writes detections.csv in LUNA16's submission format."
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m luna.detect",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    scans = parser.add_mutually_exclusive_group(required=True)
    scans.add_argument(
        "--data_dir", type=Path, help="a LUNA16 folder: its scans under subset*/ (no CSV needed)"
    )
    scans.add_argument(
        "--scans",
        type=Path,
        nargs="+",
        help="volume files SimpleITK reads (.mhd, .nii.gz, .nrrd, .mha) or DICOM series folders",
    )
    parser.add_argument(
        "--subsets",
        type=integer_list("subsets"),
        default=None,
        help="with --data_dir: only these subsets, e.g. 8,9",
    )
    parser.add_argument(
        "--images",
        type=lambda text: [uid.strip() for uid in text.split(",") if uid.strip()],
        default=None,
        help="with --data_dir: only these series uids, comma-separated",
    )
    parser.add_argument(
        "--segmentation",
        type=Path,
        required=True,
        help="a segmentation checkpoint (luna.fit --config configs/luna16_segment.yaml)",
    )
    parser.add_argument(
        "--classifier", type=Path, required=True, help="a candidate classifier checkpoint (luna.fit)"
    )
    parser.add_argument(
        "--malignancy",
        type=Path,
        default=None,
        help="a malignancy classifier checkpoint "
        "(luna.fit --config configs/luna16_malignancy.yaml): adds a malignancy column",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("detections"), help="folder of detections.csv and .json"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="segmentation probability above which a voxel "
        "belongs to a candidate (none given: the segmentation checkpoint's)",
    )
    parser.add_argument("--min_volume_mm3", type=float, default=0.0, help="drop smaller candidates")
    parser.add_argument(
        "--max_candidates",
        type=positive_int,
        default=1000,
        help="classify at most this many candidates of a scan, those the segmentation is surest of",
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: a GPU when there is one)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 when a scan could not be detected)."""
    args = parser().parse_args(argv)
    problem = writable_problem(args.output)
    if problem:
        raise PermissionError(f"--output {args.output}: cannot write the detections there: {problem}")
    if args.scans:
        scans, data_dir = volume_files(args.scans), None
    else:
        scans, data_dir = luna16_scans(args.data_dir, args.subsets, args.images), str(args.data_dir.resolve())
    segmentation = load_trained(args.segmentation, "segmentation", "--segmentation")
    classifier = load_trained(args.classifier, "classification", "--classifier")
    malignancy = load_trained(args.malignancy, "classification", "--malignancy") if args.malignancy else None
    threshold = args.threshold if args.threshold is not None else segmentation.hparams.get("threshold", 0.5)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    detector = Detector(
        stage_of(segmentation, device),
        stage_of(classifier, device),
        None if malignancy is None else stage_of(malignancy, device),
        threshold,
        args.min_volume_mm3,
        args.max_candidates,
        device,
    )
    writer = DetectionsWriter(args.output / "detections.csv", malignancy is not None)
    for k, (image_id, path) in enumerate(scans, start=1):
        try:
            findings, seconds = detector.detect(path)
        except (ScanReadError, CropSettingsError) as error:
            log.error("scan %d/%d %s not detected: %s", k, len(scans), image_id, error)
            writer.fail(image_id, str(error))
            continue
        writer.add(image_id, findings, seconds)
        if len(findings):
            log.info(
                "scan %d/%d %s: %d candidates, the most probable at %.3f (%.1f s)",
                k,
                len(scans),
                image_id,
                len(findings),
                float(findings.probability.max()),
                seconds,
            )
        else:
            log.info(
                "scan %d/%d %s: the segmentation found nothing: no row (%.1f s)",
                k,
                len(scans),
                image_id,
                seconds,
            )
    about = {
        "data_dir": data_dir,
        "segmentation": str(args.segmentation.resolve()),
        "classifier": str(args.classifier.resolve()),
        "malignancy": str(args.malignancy.resolve()) if args.malignancy else None,
        "threshold": threshold,
        "min_volume_mm3": args.min_volume_mm3,
        "device": str(device),
    }
    csv_path, record = writer.close(about)
    log.info(
        "detections: %d rows of %d scans written to %s (record: %s)",
        writer.rows,
        len(writer.images),
        csv_path,
        record,
    )
    if writer.failed:
        log.warning(
            "%d scan(s) could not be detected: %s", len(writer.failed), ", ".join(sorted(writer.failed))
        )
        return 1
    return 0


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2)."""
    run_command(main)


if __name__ == "__main__":
    cli()
