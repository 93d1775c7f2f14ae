"""``python -m luna.fit``: the Lightning CLI of luna (also installed as the ``luna`` command).

    python -m luna.fit                                   # train on phantom data (configs/default.yaml)
    python -m luna.fit --config configs/luna16.yaml --data.data_dir=/data/LUNA16
    python -m luna.fit validate --ckpt_path=PATH         # also: test, predict
    python -m luna.fit --help | --print_config

Without a subcommand, ``fit`` is meant. ``configs/default.yaml`` is always read first; every
``--config`` file and ``--section.key=value`` after it overrides what comes before.
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import sys
import warnings
from importlib import resources
from typing import NoReturn

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from luna.callbacks.checkpoint import RunCheckpoint
from luna.callbacks.figures import ValidationFigures
from luna.callbacks.predictions import PredictionCsvWriter
from luna.callbacks.run_log import RunLog
from luna.cli.run_folder import LoggerName, run_loggers
from luna.data.cache.read import CacheBuildError
from luna.data.datamodule import CropDataModule
from luna.data.volume import ScanReadError
from luna.training.finetuning import UntrustedCheckpointError
from luna.training.module import DivergenceError, LunaClassifier

DEFAULT_CONFIG = resources.files("luna.configs") / "default.yaml"  # configs/, installed as package data
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# model options that describe how to evaluate, not what was trained: a checkpoint does not override them
EVALUATION_OPTIONS = ("tta_flips", "threshold", "prior_correction", "mistakes_shown", "compile")
USAGE = "python -m luna.fit [fit|validate|test|predict] [--config FILE ...] [--section.key=VALUE ...]"
# what a user can cause and fix: shown as one line by `cli`
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, CacheBuildError, ScanReadError,
               UntrustedCheckpointError, DivergenceError)


class LunaArgumentParser(LightningArgumentParser):
    """Errors in one short paragraph instead of a page of usage, with the likely key when a
    ``--section.key`` is mistyped."""

    argv: list[str] = []  # the command line being parsed (set by ``main``), to name a mistyped key

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        lines = [f"error: {message.strip().splitlines()[0]}"]
        if "not accepted" in message or "nrecognized arguments" in message:
            known = self._known_keys()  # this parser's keys: a subclass's parser knows them without its section
            given = [arg[2:].split("=")[0] for arg in self.argv if arg.startswith("--") and "." in arg]
            for key in given:
                section, _, tail = key.partition(".")
                if key in known or tail in known:
                    continue
                if any(k.startswith(f"{section}.") for k in known):
                    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                else:
                    close = [f"{section}.{match}" for match in difflib.get_close_matches(tail, known, n=3, cutoff=0.6)]
                hint = f": did you mean {' or '.join('--' + k for k in close)}?" if close else ""
                lines.append(f"  --{key} is not an option{hint}")
        lines.append("  (python -m luna.fit --help lists every option)")
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)

    def _known_keys(self) -> list[str]:
        """Every ``section.key`` of this parser; a subclass's arguments as ``section.key`` (no ``init_args``)."""

        def walk(prefix: str, value) -> list[str]:
            if isinstance(value, dict):
                value = value.get("init_args", value) if "class_path" in value else value
                return [key for name, item in value.items() for key in walk(f"{prefix}{name}.", item)]
            return [prefix[:-1]]

        return sorted(walk("", self.get_defaults().as_dict()))


class RunConfig(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` into the run folder, except for a ``fast_dev_run`` (which writes nothing)."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if not trainer.fast_dev_run:
            super().setup(trainer, pl_module, stage)


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
        parser.link_arguments("data.input_widths_irc", "model.input_widths_irc", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning rebuilds the model from the checkpoint's hyperparameters for validate, test and
        predict; how to evaluate (test-time flips, threshold, prior correction, compilation...) is
        still this command's choice, not the training run's."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        model = self.config[subcommand].get("model")
        chosen = {key: model.get(key) for key in EVALUATION_OPTIONS} if model is not None else {}
        super()._parse_ckpt_path()
        for key, value in chosen.items():
            self.config[subcommand]["model"][key] = value

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """One run folder for every logger (see ``luna.cli.run_folder``), and
        ``--trainer.enable_progress_bar=false`` also drops the configured progress bar (for batch jobs)."""
        config = self.config_init[self.subcommand]
        trainer_config = config.get("trainer") or {}
        if trainer_config.get("logger") is None:
            kwargs["logger"] = run_loggers(trainer_config.get("default_root_dir") or "logs", config["loggers"])
        if trainer_config.get("enable_progress_bar") is False:
            callbacks = trainer_config.get("callbacks") or []
            kwargs["callbacks"] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return super().instantiate_trainer(**kwargs)


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes: Rich's progress bar
    replaces it while it draws, and lines then appear above the bar instead of through it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _NoAdvertising(logging.Filter):
    """Drops Lightning's tip to install its cloud logger, printed on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def main(args: list[str] | None = None) -> LunaCLI:
    """Run the CLI on ``args`` (default: the command line), with ``fit`` meant when no subcommand is given."""
    if not logging.getLogger().handlers:  # show luna's progress (cache builds, splits) like Lightning's own
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger().addHandler(handler)
    logging.getLogger("luna").setLevel(logging.INFO)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdvertising())
    # By design the module, not the DataModule, gives batches their final form on the device.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
    # Lightning 2.6's own use of torch's pytree API, on every command: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated", module="pytorch_lightning.utilities._pytree")
    argv = sys.argv if args is None else [sys.argv[0], *args]
    if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
        argv.insert(1, "fit")
    LunaArgumentParser.argv = argv[2:]
    return LunaCLI(
        LunaClassifier,
        CropDataModule,
        subclass_mode_data=True,
        seed_everything_default=1234,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        parser_class=LunaArgumentParser,
        auto_configure_optimizers=False,  # the module's own --model.optimizer, not a second top-level one
        parser_kwargs={"prog": "python -m luna.fit", "usage": USAGE,
                       **{subcommand: {"default_config_files": [str(DEFAULT_CONFIG)], "usage": USAGE,
                                       "prog": f"python -m luna.fit {subcommand}"} for subcommand in SUBCOMMANDS}},
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
