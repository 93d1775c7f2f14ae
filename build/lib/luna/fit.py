"""``python -m luna.fit``: the Lightning CLI of luna (also installed as the ``luna`` command).

    python -m luna.fit                                   # train on phantom data (configs/default.yaml)
    python -m luna.fit --config configs/luna16.yaml --data.data_dir=/data/LUNA16
    python -m luna.fit validate --ckpt_path=PATH         # also: test, predict
    python -m luna.fit --help | --print_config

Without a subcommand, ``fit`` is meant. ``configs/default.yaml`` is always read first; every
``--config`` file and ``--section.key=value`` after it overrides what comes before.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from importlib import resources

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from luna.checkpointing import RunCheckpoint
from luna.data.cache import CacheBuildError
from luna.data.datamodule import CropDataModule
from luna.data.volume import ScanReadError
from luna.finetuning import UntrustedCheckpointError
from luna.module import DivergenceError, LunaClassifier
from luna.predictions import PredictionCsvWriter
from luna.run_folder import LoggerName, run_loggers
from luna.run_log import RunLog
from luna.validation_figures import ValidationFigures

DEFAULT_CONFIG = resources.files("luna.configs") / "default.yaml"  # configs/, installed as package data
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# what a user can cause and fix: shown as one line by `cli`
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, CacheBuildError, ScanReadError,
               UntrustedCheckpointError, DivergenceError)


class LunaCLI(LightningCLI):
    """LightningCLI with the callbacks every run wants, each configurable under its own key."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/f1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": True,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionCsvWriter, "predictions")
        parser.add_lightning_class_args(ValidationFigures, "figures")
        parser.add_lightning_class_args(RunLog, "run_log")
        parser.add_argument("--loggers", type=list[LoggerName], default=["csv", "tensorboard"],
                            help="loggers of the run, all in <trainer.default_root_dir>/version_N/ "
                                 "(csv is required; wandb is offline unless WANDB_MODE=online). An explicit "
                                 "--trainer.logger replaces them.")
        parser.link_arguments("data.init_args.width_irc", "model.width_irc")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """One run folder for every logger (see ``luna.run_folder``), and
        ``--trainer.enable_progress_bar=false`` also drops the configured progress bar (for batch jobs)."""
        config = self.config_init[self.subcommand]
        trainer_config = config.get("trainer") or {}
        if trainer_config.get("logger") is None:
            kwargs["logger"] = run_loggers(trainer_config.get("default_root_dir") or "logs", config["loggers"])
        if trainer_config.get("enable_progress_bar") is False:
            callbacks = trainer_config.get("callbacks") or []
            kwargs["callbacks"] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None) -> LunaCLI:
    """Run the CLI on ``args`` (default: the command line), with ``fit`` meant when no subcommand is given."""
    if not logging.getLogger().handlers:  # show luna's progress (cache builds, splits) like Lightning's own
        logging.basicConfig(format="%(message)s")
    logging.getLogger("luna").setLevel(logging.INFO)
    # By design the module, not the DataModule, gives batches their final form on the device.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
    argv = sys.argv if args is None else [sys.argv[0], *args]
    if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
        argv.insert(1, "fit")
    return LunaCLI(
        LunaClassifier,
        CropDataModule,
        subclass_mode_data=True,
        seed_everything_default=1234,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={subcommand: {"default_config_files": [str(DEFAULT_CONFIG)]} for subcommand in SUBCOMMANDS},
        args=argv[1:] if args is not None else None,
    )


def cli() -> None:
    """The command line: ``main`` with a user's mistakes (a missing folder, a bad value, a diverged
    run) reported in one line instead of a traceback (``LUNA_TRACEBACK=1`` shows it), and exit
    statuses a scheduler understands: 2 for such errors, 143 when stopped by SIGTERM."""
    try:
        main()
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)
    except USER_ERRORS as error:
        if os.environ.get("LUNA_TRACEBACK"):
            raise
        print(f"error: {_reason(error)}", file=sys.stderr)
        sys.exit(2)


def _reason(error: BaseException) -> str:
    """The line of an error that says what is wrong: jsonargparse wraps a constructor's own message
    ("batch_size=-1: must be ...") in a list of the union's subtypes it tried."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
    return reasons[0] if reasons else (lines[0] if lines else type(error).__name__)


if __name__ == "__main__":
    cli()
