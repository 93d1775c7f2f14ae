"""One folder per run: ``<default_root_dir>/version_N/`` holds everything a run writes.

    version_N/metrics.csv, hparams.yaml, config.yaml   the CSV logger and the resolved config
    version_N/checkpoints/                               best-*.ckpt and last.ckpt
    version_N/figures/                                   PNG figures of every validation and test
    version_N/tensorboard/                               TensorBoard events (tensorboard --logdir ROOT)
    version_N/wandb/                                     W&B files, when asked for
    version_N/predictions.csv                            ``predict`` output

Every logger of a run shares the one version number, so the CSV and TensorBoard logs of a run
can never drift apart, and moving ``default_root_dir`` moves all of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

LoggerName = Literal["csv", "tensorboard", "wandb"]


def next_version(root: str | Path) -> int:
    """The first unused ``version_N`` under ``root`` (0 for a new folder)."""
    root = Path(root)
    numbers = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(numbers, default=-1) + 1


def claim_version(root: str | Path) -> int:
    """Create the next ``version_N`` folder under ``root`` and return N.

    The folder is made with an exclusive ``mkdir``: two runs started at the same moment with the
    same ``root`` get two folders, never one shared (interleaved metrics, one config for two runs).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def run_loggers(root: str | Path, names: list[LoggerName], project: str = "luna",
                wandb_checkpoints: bool | Literal["all"] = False) -> list[Logger]:
    """The loggers of a new run under ``root``, sharing one version; the CSV logger comes first.

    The version is chosen by global rank 0 (read from the environment, as Lightning does before any
    process group exists); other ranks never write logs, and Lightning broadcasts rank 0's paths.
    """
    if "csv" not in names:
        raise ValueError(f"loggers={names}: 'csv' is required (it holds metrics.csv, config.yaml and the checkpoints)")
    unknown = sorted(set(names) - {"csv", "tensorboard", "wandb"})
    if unknown:
        raise ValueError(f"loggers={names}: unknown {unknown}; choose among csv, tensorboard, wandb")
    root = Path(root)
    version = claim_version(root) if getattr(rank_zero_only, "rank", 0) == 0 else 0
    loggers: list[Logger] = [CSVLogger(root, name="", version=version)]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(root, name="", version=version, sub_dir="tensorboard", default_hp_metric=False))
    if "wandb" in names:
        folder = root / f"version_{version}"
        # W&B stages tables, their images and checkpoints as artifacts in its data folder until they are
        # synced: keep them with the runs instead of in the home folder
        os.environ.setdefault("WANDB_DATA_DIR", str((root / "wandb-data").resolve()))
        # offline unless WANDB_MODE=online (after `wandb login`); `wandb sync` uploads offline runs later, with
        # the artifacts (tables, checkpoints) staged meanwhile: wandb's own mode, so Lightning stages those too
        os.environ.setdefault("WANDB_MODE", "offline")
        loggers.append(WandbLogger(project=project, name=f"{root.name}/version_{version}", save_dir=str(folder),
                                   log_model=wandb_checkpoints))
    return loggers
