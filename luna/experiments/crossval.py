"""LUNA16's ten-fold cross-validation, one fold after the other (``python -m luna.crossval``), of
the candidate classifier alone (the candidate track) or of the whole detection (``detect=True``).

Fold K trains on the nine other subsets (``--data.split_by=fold --data.val_fold=K``), then
predicts ``subsetK`` with its final weights (``last.ckpt``: the held-out fold chooses nothing, so
its score is not optimistic). The candidate track predicts every candidate of the subset; the
detection track also trains the segmentation on the same nine subsets and runs ``luna.detect``
on the subset's scans. The ten files of a track are merged into one submission over all scans
and scored once, as LUNA16 results are (FROC, CPM with its bootstrap interval), each fold's own
CPM beside it::

    OUTPUT/foldK/version_N/...                  the fold's classifier run (checkpoints, metrics, figures)
    OUTPUT/foldK/predictions.csv                its held-out predictions (written last: the fold is done)
    OUTPUT/foldK/segmentation/version_N/...     the fold's segmentation run (detection track)
    OUTPUT/foldK/detection/detections.csv       its held-out detections (detection track)
    OUTPUT/predictions.csv, froc.json, froc.png the merged candidate track and its FROC
    OUTPUT/detection/detections.csv, froc.*     the merged detection track and its FROC
    OUTPUT/crossval.json                        per-fold and merged CPM of each track
    OUTPUT/ensemble/predictions.csv             with --ensemble: the mean probability of the folds' models

Each run is a ``python -m luna.fit`` (or ``luna.detect``) process given the caller's arguments.
Resumable: finished steps are skipped, a fold whose training was cut off resumes from its newest
checkpoint (``last.ckpt`` or a SLURM ``hpc_ckpt``).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from luna.io.files import write_atomic, write_json_atomic
from luna.luna16.report import summary, table, write_froc_report
from luna.luna16.scoring import evaluate_submission, predicted_data_dir

log = logging.getLogger(__name__)

FOLDS = tuple(range(10))
TRAINED = "trained.json"
SEGMENTED = "trained.json"  # in the fold's segmentation/ folder
PREDICTIONS = "predictions.csv"
DETECTIONS = "detections.csv"


def fold_arguments(fold: int, fold_dir: Path) -> list[str]:
    """The ``luna.fit`` arguments that make a run fold ``fold`` of the cross-validation."""
    return ["--data.split_by=fold", f"--data.val_fold={fold}", f"--trainer.default_root_dir={fold_dir}"]


def newest_checkpoint(fold_dir: Path) -> Path | None:
    """The most recent checkpoint of an interrupted fold: a ``last.ckpt`` or a SLURM ``hpc_ckpt``."""
    candidates = list(fold_dir.glob("version_*/checkpoints/last.ckpt")) + list(
        fold_dir.glob("hpc_ckpt_*.ckpt")
    )
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def _luna(command_name: str, arguments: list[str]) -> None:
    """Run ``python -m luna.<command_name>`` and wait; SIGTERM, SIGINT and SIGUSR1 (a SLURM time
    limit) are passed on to it, so that it can save its checkpoint (and requeue) as a run started
    alone would."""
    command = [sys.executable, "-m", f"luna.{command_name}", *arguments]
    log.info("running: %s", " ".join(command))
    child = subprocess.Popen(command)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    previous = {
        signum: signal.signal(signum, lambda signum, frame: child.send_signal(signum)) for signum in forwarded
    }
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status != 0:
        raise subprocess.CalledProcessError(status, command)


def trained_checkpoint(fold_dir: Path, record: str = TRAINED) -> str | None:
    """The final checkpoint of a run whose training finished (recorded in ``record``), or None."""
    trained = fold_dir / record
    return json.loads(trained.read_text())["checkpoint"] if trained.is_file() else None


def train(fold: int, run_dir: Path, fit_args: list[str], record: str = TRAINED) -> str:
    """Train fold ``fold`` in ``run_dir`` (or resume it, or find it trained); its final checkpoint,
    recorded in ``run_dir/record``."""
    checkpoint = trained_checkpoint(run_dir, record)
    if checkpoint is not None:
        return checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = newest_checkpoint(run_dir)
    if resume is not None:
        log.info("fold %d: resuming %s from %s", fold, run_dir, resume)
    _luna(
        "fit",
        ["fit", *fit_args, *fold_arguments(fold, run_dir), *([f"--ckpt_path={resume}"] if resume else [])],
    )
    last = max(run_dir.glob("version_*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
    write_json_atomic(run_dir / record, {"checkpoint": str(last)})
    return str(last)


def run_fold(fold: int, output: Path, fit_args: list[str]) -> Path:
    """Train fold ``fold``'s classifier (or resume it) and predict its held-out subset; its predictions."""
    fold_dir = output / f"fold{fold}"
    predictions = fold_dir / PREDICTIONS
    if predictions.is_file():
        log.info("fold %d: done (%s); skipped", fold, predictions)
        return predictions
    checkpoint = train(fold, fold_dir, fit_args)
    log.info("fold %d: predicting subset%d with %s", fold, fold, checkpoint)
    _luna(
        "fit",
        [
            "predict",
            *fit_args,
            *fold_arguments(fold, fold_dir),
            f"--ckpt_path={checkpoint}",
            f"--predictions.path={predictions}",
        ],
    )
    return predictions


def run_detection_fold(fold: int, output: Path, fit_args: list[str], segmentation_config: Path) -> Path:
    """Fold ``fold`` of the detection track: its classifier (``run_fold``), its segmentation
    (``segmentation_config`` with the same arguments), then ``luna.detect`` on its held-out subset;
    returns its detections."""
    fold_dir = output / f"fold{fold}"
    detections = fold_dir / "detection" / DETECTIONS
    if detections.is_file():
        log.info("fold %d: detected (%s); skipped", fold, detections)
        return detections
    data_dir = fold_data_dir(run_fold(fold, output, fit_args))
    classifier = trained_checkpoint(fold_dir)
    segmentation = train(
        fold, fold_dir / "segmentation", ["--config", str(segmentation_config), *fit_args], SEGMENTED
    )
    log.info("fold %d: detecting subset%d with %s and %s", fold, fold, segmentation, classifier)
    _luna(
        "detect",
        [
            "--data_dir",
            str(data_dir),
            "--subsets",
            str(fold),
            "--segmentation",
            segmentation,
            "--classifier",
            classifier,
            "--output",
            str(detections.parent),
        ],
    )
    return detections


def predict_with_ensemble(output: Path, fit_args: list[str]) -> Path:
    """Predict with the trained models of every fold at once (their mean probability), on the data
    the other arguments name; returns the predictions file."""
    trained = (trained_checkpoint(output / f"fold{fold}") for fold in FOLDS)
    checkpoints = [checkpoint for checkpoint in trained if checkpoint is not None]
    if not checkpoints:
        raise FileNotFoundError(f"no fold of {output} is trained yet (fold*/{TRAINED}): run the folds first")
    predictions = output / "ensemble" / PREDICTIONS
    log.info("predicting with the ensemble of %d fold models", len(checkpoints))
    _luna(
        "fit",
        [
            "predict",
            *fit_args,
            f"--trainer.default_root_dir={output / 'ensemble'}",
            f"--ckpt_path={checkpoints[0]}",
            f"--evaluation.ensemble={json.dumps(checkpoints[1:])}",
            f"--predictions.path={predictions}",
        ],
    )
    return predictions


def fold_data_dir(fold_predictions: Path) -> Path:
    """The data folder a fold's predictions are about (recorded beside them by ``luna.fit predict``)."""
    data_dir = predicted_data_dir(fold_predictions)
    if data_dir is None:
        raise FileNotFoundError(
            f"{fold_predictions.with_suffix('.json')} does not say which data folder "
            f"{fold_predictions} predicts; predict the fold again"
        )
    return data_dir


def merge(fold_predictions: dict[int, Path], merged: Path) -> None:
    """Concatenate the folds' prediction files (same header) into one submission, atomically."""

    def concatenate(out) -> None:
        for k, (_, path) in enumerate(sorted(fold_predictions.items())):
            with path.open("rb") as handle:
                header = handle.readline()
                if k == 0:
                    out.write(header)
                shutil.copyfileobj(handle, out)

    write_atomic(merged, concatenate, sum(path.stat().st_size for path in fold_predictions.values()))


def score(output: Path, bootstrap: int, seed: int, track: str = "candidates") -> tuple[dict, str]:
    """Merge the finished folds' files of ``track`` (``candidates`` or ``detection``), score them
    once and each fold alone; write the reports. Returns the track's record (also in
    ``crossval.json``) and the report's text."""
    fold_file = (
        (lambda fold: output / f"fold{fold}" / PREDICTIONS)
        if track == "candidates"
        else (lambda fold: output / f"fold{fold}" / "detection" / DETECTIONS)
    )
    report_dir = output if track == "candidates" else output / "detection"
    done = {fold: fold_file(fold) for fold in FOLDS if fold_file(fold).is_file()}
    if not done:
        raise FileNotFoundError(
            f"no fold of {output} has {track} yet ({fold_file(0).relative_to(output)} ...)"
        )
    data_dirs = {fold_data_dir(path) for path in done.values()}
    if len(data_dirs) > 1:
        raise ValueError(
            f"the folds of {output} predict different data folders: {sorted(map(str, data_dirs))}"
        )
    data_dir = data_dirs.pop()
    report_dir.mkdir(parents=True, exist_ok=True)
    merged = report_dir / fold_file(0).name
    merge(done, merged)
    subsets = None if len(done) == len(FOLDS) else sorted(done)
    if subsets is not None:
        log.warning(
            "only folds %s have %s: the merged FROC covers their subsets only",
            subsets,
            "predictions" if track == "candidates" else "detections",
        )
    per_fold = {
        fold: evaluate_submission(path, data_dir, subsets=[fold], bootstrap_samples=0).result
        for fold, path in done.items()
    }
    evaluation = evaluate_submission(
        merged, data_dir, subsets=subsets, bootstrap_samples=bootstrap, seed=seed
    )
    write_froc_report(evaluation, report_dir, f"FROC, {track} track: {len(done)}-fold cross-validation")
    record = {
        "folds": sorted(done),
        "merged": summary(evaluation),
        "per_fold": {
            str(fold): {
                "cpm": result.cpm,
                "scans": result.counts.scans,
                "nodules": result.counts.nodules,
                "detected": result.counts.detected,
            }
            for fold, result in per_fold.items()
        },
    }
    summary_path = output / "crossval.json"
    records = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    records = records if "merged" not in records else {"candidates": records}  # written before the tracks
    write_json_atomic(summary_path, {**records, track: record}, indent=1)
    lines = [
        table(evaluation, f"{merged} ({len(done)} folds merged)"),
        "",
        f"per-fold CPM of the {track} track (each fold's scans alone):",
    ]
    lines += [
        f"  fold {fold}: CPM {result.cpm:.3f} over {result.counts.scans} scans, {result.counts.detected}/"
        f"{result.counts.nodules} nodules detected"
        for fold, result in sorted(per_fold.items())
    ]
    return record, "\n".join(lines)
