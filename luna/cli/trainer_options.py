"""The Trainer options luna derives from a command: where an evaluation writes, what the console
shows, and how checkpoints are written (``LunaCLI.instantiate_trainer`` applies them)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import ModelSummary, ProgressBar

from luna.callbacks.checkpoint import AtomicCheckpointIO
from luna.io.files import writable_problem

log = logging.getLogger(__name__)

CHECKPOINT_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's names for checkpoints of this process


def run_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """The luna run folder a checkpoint was written in (``<run>/checkpoints/x.ckpt`` beside
    ``<run>/config.yaml``), or None (no checkpoint, or one from elsewhere)."""
    if not ckpt_path or ckpt_path in CHECKPOINT_KEYWORDS:
        return None
    folder = Path(ckpt_path).resolve().parent
    return (
        folder.parent if folder.name == "checkpoints" and (folder.parent / "config.yaml").is_file() else None
    )


def evaluated_run(subcommand: str, ckpt_path: str | None, root: Path) -> Path | None:
    """The run folder an evaluation (``validate``, ``test``, ``predict``) of ``ckpt_path`` writes
    into: the checkpoint's own run, unless it cannot be written (a read-only store of models: then
    the command writes under ``root``, and says so); None for ``fit`` or a checkpoint from elsewhere."""
    run = run_of_checkpoint(ckpt_path) if subcommand != "fit" else None
    problem = writable_problem(run) if run is not None else None
    if problem:
        log.warning(
            "the checkpoint's run folder cannot take this %s (%s): writing it under %s instead",
            subcommand,
            problem,
            root,
        )
        return None
    return run


def console_options(trainer_config: dict) -> dict:
    """Output to a file or a pipe (a batch job's log) gets no progress bar (its last frame would
    land after the summary) unless ``enable_progress_bar`` says so, and the plain model summary
    (Rich's is cut to 80 columns there); ``enable_progress_bar=false`` drops a configured bar."""
    options: dict = {}
    bar = trainer_config.get("enable_progress_bar")
    if bar is None and not sys.stdout.isatty():
        log.info("output is not a terminal: no progress bar (--trainer.enable_progress_bar=true keeps it)")
        bar = options["enable_progress_bar"] = False
    callbacks = trainer_config.get("callbacks") or []
    if bar is False:
        callbacks = options["callbacks"] = [c for c in callbacks if not isinstance(c, ProgressBar)]
    summary = trainer_config.get("enable_model_summary") is not False
    if summary and not sys.stdout.isatty() and not any(isinstance(c, ModelSummary) for c in callbacks):
        options["callbacks"] = [*callbacks, ModelSummary()]
    return options


def checkpoint_plugins(trainer_config: dict) -> dict:
    """luna's checkpoint writer (``AtomicCheckpointIO``: never a half-written file) unless the
    configuration gives a writer of its own."""
    plugins = trainer_config.get("plugins") or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        return {}
    return {"plugins": [*plugins, AtomicCheckpointIO()]}
