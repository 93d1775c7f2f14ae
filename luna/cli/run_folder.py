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

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Literal

from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)

LoggerName = Literal["csv", "tensorboard", "wandb"]
_claimed: list[Path] = []  # the run folders this process made, until its command ends


def next_version(root: str | Path) -> int:
    """The first unused ``version_N`` under ``root`` (0 for a new folder)."""
    root = Path(root)
    numbers = [
        int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
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
        except FileExistsError:
            version += 1
            continue
        _claimed.append(root / f"version_{version}")
        return version


def discard_unused_runs() -> None:
    """After a command failed: remove the run folders it made that hold no checkpoint and no
    metrics (it stopped before training or evaluating anything), so that the next run takes their
    number and ``logs/version_0`` stays the first run that did something."""
    while _claimed:
        folder = _claimed.pop()
        if (
            folder.is_dir()
            and not any(folder.glob("checkpoints/*.ckpt"))
            and not (folder / "metrics.csv").exists()
        ):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s: the run stopped before it trained or evaluated anything", folder)


def forget_claimed_runs() -> None:
    """After a command ended well: its run folders are kept."""
    _claimed.clear()


def run_loggers(
    root: str | Path,
    names: list[LoggerName],
    project: str = "luna",
    wandb_checkpoints: bool | Literal["all"] = False,
) -> list[Logger]:
    """The loggers of a new run under ``root``, sharing one version; the CSV logger comes first.

    The version is chosen by global rank 0 (read from the environment, as Lightning does before any
    process group exists); other ranks never write logs, and Lightning broadcasts rank 0's paths.
    """
    if "csv" not in names:
        raise ValueError(
            f"loggers={names}: 'csv' is required (it holds metrics.csv, config.yaml and the checkpoints)"
        )
    unknown = sorted(set(names) - {"csv", "tensorboard", "wandb"})
    if unknown:
        raise ValueError(f"loggers={names}: unknown {unknown}; choose among csv, tensorboard, wandb")
    root = Path(root)
    version = claim_version(root) if getattr(rank_zero_only, "rank", 0) == 0 else 0
    loggers: list[Logger] = [CSVLogger(root, name="", version=version)]
    if "tensorboard" in names:
        loggers.append(
            TensorBoardLogger(root, name="", version=version, sub_dir="tensorboard", default_hp_metric=False)
        )
    if "wandb" in names:
        folder = root / f"version_{version}"
        check_wandb_login()
        # W&B stages tables, their images and checkpoints as artifacts in its data folder until they are
        # synced: keep them in the run's own folder, which `wandb sync` reads and a user deletes as one
        _stage_wandb_in(folder / "wandb" / "staging")
        # offline unless WANDB_MODE=online (after `wandb login`); `wandb sync` uploads offline runs
        # later, with the artifacts (tables, checkpoints) staged meanwhile: wandb's own mode, so
        # Lightning stages those too
        os.environ.setdefault("WANDB_MODE", "offline")
        loggers.append(
            WandbLogger(
                project=project,
                name=f"{root.name}/version_{version}",
                save_dir=str(folder),
                log_model=wandb_checkpoints,
            )
        )
    return loggers


_staging: list[str] = []  # the WANDB_DATA_DIR luna set last (a user's own is left alone)


def _stage_wandb_in(folder: Path) -> None:
    """Point W&B's staging folder (``WANDB_DATA_DIR``) at this run, unless the user chose one."""
    given = os.environ.get("WANDB_DATA_DIR")
    if given is None or given in _staging:
        os.environ["WANDB_DATA_DIR"] = str(folder.resolve())
        _staging.append(os.environ["WANDB_DATA_DIR"])


def check_wandb_login() -> None:
    """With ``WANDB_MODE=online``, a run needs an API key: without one, one line now instead of
    wandb's traceback once the run has started.

    Raises:
        ValueError: online, and neither ``WANDB_API_KEY`` nor a ``wandb login`` entry in ``~/.netrc``.
    """
    if os.environ.get("WANDB_MODE", "offline") != "online" or os.environ.get("WANDB_API_KEY"):
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        known = netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        known = False
    if not known:
        raise ValueError(
            f"WANDB_MODE=online but no W&B API key for {host}: run `wandb login` or set WANDB_API_KEY, "
            "or leave WANDB_MODE unset to log offline (`wandb sync` uploads the run later)"
        )
