"""``python -m luna.fit``: the Lightning CLI of luna (also installed as the ``luna`` command).

    python -m luna.fit                                   # train on phantom data (configs/default.yaml)
    python -m luna.fit --config configs/luna16.yaml --data.data_dir=/data/LUNA16
    python -m luna.fit validate --ckpt_path=PATH         # also: test, predict
    python -m luna.fit --help | --print_config

Without a subcommand, ``fit`` is meant. ``configs/default.yaml`` is always read first; every
``--config`` file and ``--section.key=value`` after it overrides what comes before.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import logging
import signal
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Literal, NoReturn

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from luna.callbacks.candidate_table import CandidateTable
from luna.callbacks.checkpoint import RunCheckpoint
from luna.callbacks.evaluation import EvaluationSettings
from luna.callbacks.figures import ValidationFigures
from luna.callbacks.learning_rate import LearningRateLog
from luna.callbacks.predictions import PredictionCsvWriter
from luna.callbacks.run_log import RunLog
from luna.cli.console import setup_logging
from luna.cli.errors import option_error, run_command
from luna.cli.run_folder import LoggerName, run_loggers
from luna.data.cache.read import CacheBuildError
from luna.data.datamodule import CropDataModule
from luna.data.volume import ScanReadError
from luna.points import datamodule as _points  # noqa: F401  (listed among the data's known subclasses)
from luna.training.checkpoints import check_fits, read_checkpoint
from luna.training.inputs import CropInputs
from luna.training.module import DivergenceError, LunaClassifier

log = logging.getLogger(__name__)

DEFAULT_CONFIG = resources.files("luna.configs") / "default.yaml"  # configs/, installed as package data
SUBCOMMANDS = ("fit", "validate", "test", "predict")
USAGE = "python -m luna.fit [fit|validate|test|predict] [--config FILE ...] [--section.key=VALUE ...]"
# what a user can cause and fix, besides bad values and files (ValueError, OSError): one line by `cli`
USER_ERRORS = (CacheBuildError, ScanReadError, DivergenceError)

# The sections whose options --help names without their (long, Lightning-written) documentation:
# section -> (title, description, the class whose own arguments are condensed; None: all)
CONDENSED = {
    "trainer": ("Lightning's Trainer",
                "As --trainer.NAME=VALUE: {names}. Their meaning: "
                "https://lightning.ai/docs/pytorch/stable/common/trainer.html, or --help_full; the values a "
                "run uses: --print_config.", None),
    "checkpoint": (None, "And Lightning's ModelCheckpoint arguments, as --checkpoint.NAME=VALUE: {names}. "
                   "Their meaning: --help_full.", ModelCheckpoint),
    "data": (None, "LunaDataModule (LUNA16 or its phantom) unless a config chooses another "
             "(configs/points.yaml: PointsDataModule, a CSV of points in your own volumes). Its options, as "
             "--data.NAME=VALUE: python -m luna.fit --data.help LunaDataModule (or PointsDataModule, "
             "MalignancyDataModule, a class path of your own).", None),
}


class FullHelp(argparse.Action):
    """``--help_full``: the help with every Lightning option documented (``--help`` names them)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        parser.full_help = True
        parser.print_help()
        parser.exit()


class LunaArgumentParser(LightningArgumentParser):
    """Errors in one line instead of a page of usage (``luna.cli.errors``): the likely key when a
    ``--section.key`` is mistyped, the new name when it was renamed. Prefixes of an option are not
    taken for it (``--trainer.max_epoch`` is an error, not ``max_epochs``)."""

    argv: list[str] = []  # the command line being parsed (set by ``main``), to name a mistyped key

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    full_help = False  # --help_full: every option of Lightning's Trainer and ModelCheckpoint, documented

    def format_help(self) -> str:
        """The help a user reads: luna's own options in full; Lightning's Trainer and ModelCheckpoint
        options (400 lines of their docstrings) named in a paragraph each, with where to read them;
        the data's options behind ``--data.help``."""
        if self.full_help:
            return super().format_help().replace("``", "")
        saved = []
        for group in self._action_groups:
            prefix = next((a.dest.split(".")[0] for a in group._group_actions if "." in a.dest), None)
            if prefix not in CONDENSED or not any(a.dest == prefix for a in group._group_actions):
                continue  # not the section itself (--data.help CLASS prints a class's own options in full)
            title, description, owner = CONDENSED[prefix]
            owned = set(inspect.signature(owner).parameters) if owner else None
            condensed = [a for a in group._group_actions if a.dest.startswith(f"{prefix}.") and a.dest != f"{prefix}.help"
                         and (owned is None or a.dest.split(".")[1] in owned)]
            names = [a.dest.split(".", 1)[1] for a in condensed if a.dest.count(".") == 1]
            saved.append((group, group.title, group.description, [(a, a.help) for a in group._group_actions]))
            for action in [*condensed, *(a for a in group._group_actions if a.dest == prefix)]:
                action.help = argparse.SUPPRESS
            group.title, group.description = title or group.title, description.format(names=", ".join(names))
        try:
            return super().format_help().replace("``", "")
        finally:
            for group, title, description, helps in saved:
                group.title, group.description = title, description
                for action, text in helps:
                    action.help = text

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        known = self._known_keys()
        print(option_error(message, self.argv, known, lambda key: _close_keys(key, known)), file=sys.stderr)
        print("  (python -m luna.fit --help lists every option)", file=sys.stderr)
        sys.exit(2)

    def _known_keys(self) -> list[str]:
        """Every ``section.key`` of this parser; a subclass's arguments as ``section.key`` (no ``init_args``)."""

        def walk(prefix: str, value) -> list[str]:
            if isinstance(value, dict):
                value = value.get("init_args", value) if "class_path" in value else value
                return [key for name, item in value.items() for key in walk(f"{prefix}{name}.", item)]
            return [prefix[:-1]]

        return sorted(walk("", self.get_defaults().as_dict()))


def _close_keys(key: str, known: list[str]) -> list[str]:
    """Options like ``key``; a subclass's parser knows its keys without their section."""
    section, _, tail = key.partition(".")
    if any(k.startswith(f"{section}.") for k in known):
        return difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return [f"{section}.{match}" for match in difflib.get_close_matches(tail, known, n=3, cutoff=0.6)]


def run_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """The luna run folder a checkpoint was written in (``<run>/checkpoints/x.ckpt`` beside
    ``<run>/config.yaml``), or None (no checkpoint, or one from elsewhere)."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
        return None
    folder = Path(ckpt_path).resolve().parent
    return folder.parent if folder.name == "checkpoints" and (folder.parent / "config.yaml").is_file() else None


class RunConfig(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` into the run folder (and into the W&B run's config),
    except for a ``fast_dev_run`` (which writes nothing) and ``predict`` (its ``.json`` says what it
    predicted with)."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if not trainer.fast_dev_run and stage != "predict":
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"config": self.config.as_dict()}, allow_val_change=True)


class LunaCLI(LightningCLI):
    """LightningCLI with the callbacks every run wants, each configurable under its own key."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--help_full", action=FullHelp, help="show every option with its documentation and exit")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(  # what to monitor is configs/default.yaml's (val/cpm), a dataset config's otherwise
            {
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": True,
            }
        )
        parser.add_lightning_class_args(LearningRateLog, "lr_monitor")
        parser.add_lightning_class_args(PredictionCsvWriter, "predictions")
        parser.add_lightning_class_args(EvaluationSettings, "evaluation")
        parser.add_lightning_class_args(ValidationFigures, "figures")
        parser.add_lightning_class_args(RunLog, "run_log")
        parser.add_argument("--loggers", type=list[LoggerName], default=["csv", "tensorboard"],
                            help="loggers of the run, all in <trainer.default_root_dir>/version_N/ "
                                 "(csv is required; wandb is offline unless WANDB_MODE=online). An explicit "
                                 "--trainer.logger replaces them.")
        parser.add_argument("--wandb_checkpoints", type=bool | Literal["all"], default=False,
                            help="with the wandb logger: upload checkpoints as W&B artifacts (true: the best and last "
                                 "at the end; all: every one as it is written)")
        parser.add_lightning_class_args(CandidateTable, "candidate_table")
        parser.link_arguments("data.input_widths_irc", "model.input_widths_irc", apply_on="instantiate")
        parser.link_arguments("data.input_spacings_mm", "model.input_spacings_mm", apply_on="instantiate")
        parser.link_arguments("data.input_intensity", "model.input_intensity", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then read a ``--ckpt_path`` safely (before Lightning loads its hyperparameters):
        a missing, empty, truncated or untrusted file is one line here, not a traceback."""
        super().parse_arguments(parser, args)
        self._checkpoint_hparams: dict | None = None
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path not in ("last", "best", "hpc", "registry"):
            trusted = "(none: Lightning loads only what torch loads safely)"
            self._checkpoint_hparams = read_checkpoint(path, trust_option=trusted).get("hyper_parameters", {})

    def before_fit(self) -> None:
        self._check_checkpoint()

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        self._check_checkpoint()

    def _check_checkpoint(self) -> None:
        """A checkpoint trained for other classes or other crops (sizes, spacings, intensities)
        than the data gives is one line, before it is loaded: not a size mismatch deep inside
        ``load_state_dict``, and never probabilities of crops it was not trained on."""
        if not self._checkpoint_hparams:
            return
        data = self.datamodule
        crops = CropInputs.of(data.input_widths_irc, data.input_spacings_mm, data.input_intensity)
        check_fits(self.config_init[self.subcommand].get("ckpt_path"), self._checkpoint_hparams, data.num_classes,
                   crops, f"the data ({', '.join(data.class_names)})")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """One run folder for every logger (see ``luna.cli.run_folder``); the evaluations of a
        checkpoint in the run it came from; and ``--trainer.enable_progress_bar=false`` also drops the
        configured progress bar, as does output to a file or pipe (batch jobs) unless it is set true.

        Where a command writes: ``fit`` a new ``<default_root_dir>/version_N``; ``validate`` and
        ``test`` of a run's checkpoint ``<run>/validate/version_N`` (``test/``), of any other
        checkpoint (or none) a new ``<default_root_dir>/version_N``; ``predict`` only its CSV and
        ``.json``, relative paths under the checkpoint's run (else ``default_root_dir``).
        """
        config = self.config_init[self.subcommand]
        trainer_config = config.get("trainer") or {}
        root = Path(trainer_config.get("default_root_dir") or "logs")
        run = run_of_checkpoint(config.get("ckpt_path")) if self.subcommand != "fit" else None
        if trainer_config.get("fast_dev_run") or self.subcommand == "predict":
            kwargs["logger"] = False  # a debug run writes nothing; predict writes its CSV only
            kwargs["default_root_dir"] = str(run or root)
        elif trainer_config.get("logger") is None:
            if run is not None:
                root = run / self.subcommand
                kwargs["default_root_dir"] = str(root)
            kwargs["logger"] = run_loggers(root, config["loggers"], wandb_checkpoints=config["wandb_checkpoints"])
        bar = trainer_config.get("enable_progress_bar")
        if bar is None and not sys.stdout.isatty():
            log.info("output is not a terminal: no progress bar (--trainer.enable_progress_bar=true keeps it)")
            bar = kwargs["enable_progress_bar"] = False  # a file would get its last frame after the summary
        if bar is False:
            callbacks = trainer_config.get("callbacks") or []
            kwargs["callbacks"] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, extra_callbacks: list[Callback] | None = None) -> LunaCLI:
    """Run the CLI on ``args`` (default: the command line), with ``fit`` meant when no subcommand is
    given; ``extra_callbacks`` join the configured ones (``luna.tune`` adds its pruning this way)."""
    setup_logging()
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
        seed_everything_default=True,  # the seed itself is configs/default.yaml's
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        parser_class=LunaArgumentParser,
        auto_configure_optimizers=False,  # the module's own --model.optimizer, not a second top-level one
        trainer_defaults={"callbacks": list(extra_callbacks)} if extra_callbacks else None,
        parser_kwargs={"prog": "python -m luna.fit", "usage": USAGE,
                       **{subcommand: {"default_config_files": [str(DEFAULT_CONFIG)], "usage": USAGE,
                                       "prog": f"python -m luna.fit {subcommand}"} for subcommand in SUBCOMMANDS}},
        args=argv[1:] if args is not None else None,
    )


def cli() -> None:
    """The command line: ``main`` with a user's mistakes (a missing folder, a bad value, a diverged
    run) reported in one line instead of a traceback (``LUNA_TRACEBACK=1`` shows it), and exit
    statuses a scheduler understands: 2 for such errors, 143 when stopped by SIGTERM."""

    def command() -> int:
        try:
            main()
        except SIGTERMException:
            return 128 + signal.SIGTERM
        return 0

    run_command(command, USER_ERRORS)


if __name__ == "__main__":
    cli()
