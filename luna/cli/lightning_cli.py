"""``LunaCLI``: LightningCLI with the callbacks every luna run wants, one run folder per run, and
checkpoints checked against the data before they are loaded."""

from __future__ import annotations

import logging
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Literal

from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelSummary, ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from luna.callbacks.candidate_table import CandidateTable
from luna.callbacks.checkpoint import AtomicCheckpointIO, RunCheckpoint
from luna.callbacks.evaluation import EvaluationSettings
from luna.callbacks.figures import ValidationFigures
from luna.callbacks.learning_rate import LearningRateLog
from luna.callbacks.predictions import PredictionCsvWriter
from luna.callbacks.run_log import RunLog
from luna.cli.parser import FullHelp
from luna.cli.run_folder import LoggerName, run_loggers
from luna.io.files import writable_problem
from luna.training.checkpoints import check_fits, read_checkpoint
from luna.training.inputs import CropInputs

log = logging.getLogger(__name__)

DEFAULT_CONFIG = resources.files("luna.configs") / "default.yaml"  # configs/, installed as package data
CHECKPOINT_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's names for checkpoints of this process
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def run_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """The luna run folder a checkpoint was written in (``<run>/checkpoints/x.ckpt`` beside
    ``<run>/config.yaml``), or None (no checkpoint, or one from elsewhere)."""
    if not ckpt_path or ckpt_path in CHECKPOINT_KEYWORDS:
        return None
    folder = Path(ckpt_path).resolve().parent
    return (
        folder.parent if folder.name == "checkpoints" and (folder.parent / "config.yaml").is_file() else None
    )


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
        parser.add_argument(
            "--help_full", action=FullHelp, help="show every option with its documentation and exit"
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        # what to monitor is configs/default.yaml's (val/cpm), a dataset config's otherwise
        parser.set_defaults(
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
        parser.add_argument(
            "--loggers",
            type=list[LoggerName],
            default=["csv", "tensorboard"],
            help="loggers of the run, all in <trainer.default_root_dir>/version_N/ "
            "(csv is required; wandb is offline unless WANDB_MODE=online). An explicit "
            "--trainer.logger replaces them.",
        )
        parser.add_argument(
            "--wandb_checkpoints",
            type=bool | Literal["all"],
            default=False,
            help="with the wandb logger: upload checkpoints as W&B artifacts (true: the best and last "
            "at the end; all: every one as it is written)",
        )
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
        if path and path not in CHECKPOINT_KEYWORDS:
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
        check_fits(
            self.config_init[self.subcommand].get("ckpt_path"),
            self._checkpoint_hparams,
            data.num_classes,
            crops,
            f"the data ({', '.join(data.class_names)})",
        )

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
        problem = writable_problem(run) if run is not None else None
        if problem:
            log.warning(
                "the checkpoint's run folder cannot take this %s (%s): writing it under %s instead",
                self.subcommand,
                problem,
                root,
            )
            run = None
        if trainer_config.get("fast_dev_run") or self.subcommand == "predict":
            kwargs["logger"] = False  # a debug run writes nothing; predict writes its CSV only
            kwargs["default_root_dir"] = str(run or root)
        elif trainer_config.get("logger") is None:
            if run is not None:
                root = run / self.subcommand
                kwargs["default_root_dir"] = str(root)
            kwargs["logger"] = run_loggers(
                root, config["loggers"], wandb_checkpoints=config["wandb_checkpoints"]
            )
        bar = trainer_config.get("enable_progress_bar")
        if bar is None and not sys.stdout.isatty():
            log.info(
                "output is not a terminal: no progress bar (--trainer.enable_progress_bar=true keeps it)"
            )
            bar = kwargs["enable_progress_bar"] = False  # a file would get its last frame after the summary
        if bar is False:
            callbacks = trainer_config.get("callbacks") or []
            kwargs["callbacks"] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if not sys.stdout.isatty() and trainer_config.get("enable_model_summary") is not False:
            # Lightning's default summary is Rich's, cut to 80 columns in a log file ("LunaMod…")
            callbacks = kwargs.get("callbacks", trainer_config.get("callbacks") or [])
            if not any(isinstance(c, ModelSummary) for c in callbacks):
                kwargs["callbacks"] = [*callbacks, ModelSummary()]
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(
            isinstance(plugin, CheckpointIO) for plugin in plugins
        ):  # no half-written checkpoint, ever
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def build_cli(
    cli_class: type[LunaCLI],
    args: list[str],
    parser_class: type[LightningArgumentParser],
    parser_kwargs: dict,
    **cli_kwargs,
) -> LunaCLI:
    """``cli_class`` over luna's classifier and data (the one construction behind ``luna.fit`` and
    ``luna.prepare``); ``parser_kwargs`` name configs/default.yaml as the default config file of
    the parser that reads the sections (each subcommand's, or the only one)."""
    from luna.data.datamodule import CropDataModule
    from luna.training.module import LunaClassifier

    parser_class.argv = [arg for arg in args if arg not in SUBCOMMANDS]
    # By design the module, not the DataModule, gives batches their final form on the device.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
    # Lightning 2.6's own use of torch's pytree API, on every command: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # luna passes the command line to LightningCLI itself (the subcommand made explicit, sys.argv left
    # alone), which Lightning warns about as if it were a notebook's mistake; and luna's epoch lines
    # carry the training loss, so an epoch shorter than log_every_n_steps loses nothing
    warnings.filterwarnings(
        "ignore", message="LightningCLI's args parameter is intended to run from within Python"
    )
    warnings.filterwarnings(
        "ignore", message="The number of training batches .* is smaller than the logging interval"
    )
    return cli_class(
        LunaClassifier,
        CropDataModule,
        subclass_mode_data=True,
        parser_class=parser_class,
        auto_configure_optimizers=False,  # the module's own --model.optimizer, not a second top-level one
        parser_kwargs=parser_kwargs,
        args=args,
        **cli_kwargs,
    )
