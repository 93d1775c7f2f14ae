"""Reading a checkpoint file safely, with errors that say what is wrong with it.

Every checkpoint luna reads (``--ckpt_path``, ``--model.init_checkpoint``, a book checkpoint, the
members of an ensemble) is read here first: with ``weights_only=True`` unless the user trusts the
file, and a missing, empty, truncated or foreign file is named in one line, not a traceback
from deep inside torch's unpickler.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from luna.training.augment import Augmentation
from luna.training.inputs import CropInputs

log = logging.getLogger(__name__)


TASK_KEY = "luna_task"  # what a luna checkpoint holds: "classification" or "segmentation"
FREQUENCIES_KEY = "luna_class_frequencies"  # a classifier's training classes, natural and as sampled


def task_of(checkpoint: dict) -> str:
    """What a checkpoint's network does: ``classification`` (also every checkpoint written before
    luna recorded it, and the book's) or ``segmentation``."""
    return str(checkpoint.get(TASK_KEY, "classification"))


def check_task(path: str | Path, found: str, expected: str, option: str) -> None:
    """Refuse a checkpoint of another task (``found``: ``task_of`` it), e.g. a classifier given where
    a segmentation is wanted.

    Raises:
        CheckpointError: one line naming the option, the file and what it is.
    """
    if found != expected:
        raise CheckpointError(f"{option}: {path} is a {found} checkpoint, not a {expected} one")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it and says why."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that holds pickled objects torch will not load with ``weights_only=True``."""


def read_checkpoint(
    path: str | Path, trust: bool = False, trust_option: str = "--model.trust_checkpoint"
) -> dict:
    """The contents of a checkpoint (a Lightning ``.ckpt`` or a book ``torch.save`` file), on the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: it is empty, truncated or not a torch file.
        UntrustedCheckpointError: it needs full unpickling and ``trust`` is false (``trust_option``
            is the option that would allow it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): the run that wrote it was stopped, or it was "
            "not copied; use another checkpoint (checkpoints/last.ckpt or best-*.ckpt)"
        )
    try:
        with torch.serialization.safe_globals([Augmentation]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            raise UntrustedCheckpointError(
                f"{path} holds pickled objects that torch does not load safely "
                f"({str(error).splitlines()[0]}); "
                f"loading it could run code. If you trust this file, pass {trust_option}=true"
            ) from None
        log.warning("loading %s with full unpickling (%s=true)", path, trust_option)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a torch checkpoint ({detail}); was it copied completely?"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary"
        )
    return checkpoint


def check_fits(path: str | Path, hparams: dict, num_classes: int, crops: CropInputs, given_by: str) -> None:
    """Refuse a checkpoint made for other classes or other crops than ``given_by`` provides.

    Args:
        path: the checkpoint (for the message, and its run's ``config.yaml`` when its
            hyperparameters predate the recorded spacings).
        hparams: its ``hyper_parameters``.
        num_classes, crops: what the data (or the evaluated model) gives.
        given_by: who gives them, for the message (``the data``, ``the evaluated checkpoint``).

    Raises:
        CheckpointError: one line naming the options that differ and how to match them.
    """
    trained_classes = hparams.get("num_classes")
    if trained_classes is not None and trained_classes != num_classes:
        raise CheckpointError(
            f"checkpoint {path} was trained for {trained_classes} classes, but {given_by} has "
            f"{num_classes}: use a checkpoint of this data"
        )
    trained = CropInputs.of_checkpoint(hparams, path)
    differences = trained.differences(crops) if trained is not None else []
    if differences:
        raise CheckpointError(
            f"checkpoint {path} was trained on crops of {trained.describe()}, but {given_by} "
            f"cuts {crops.describe()} ({'; '.join(differences)}): give the options it was trained "
            "with (its run's config.yaml has them), or use a checkpoint trained on these crops"
        )
