"""``LunaCLI``: LightningCLI with the callbacks every luna run wants, one run folder per run, and
checkpoints checked against the data before they are loaded."""

from __future__ import annotations

import importlib
import logging
from importlib import resources
from pathlib import Path
from typing import Literal

from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from luna.callbacks.candidate_table import CandidateTable
from luna.callbacks.checkpoint import RunCheckpoint
from luna.callbacks.evaluation import EvaluationSettings
from luna.callbacks.figures import ValidationFigures
from luna.callbacks.learning_rate import LearningRateLog
from luna.callbacks.predictions import PredictionCsvWriter
from luna.callbacks.run_log import RunLog
from luna.cli.parser import FullHelp
from luna.cli.run_folder import LoggerName, run_loggers
from luna.cli.trainer_options import CHECKPOINT_KEYWORDS, checkpoint_plugins, console_options, evaluated_run
from luna.segmentation.module import SegmentationModule
from luna.training.checkpoints import check_fits, check_task, read_checkpoint, task_of
from luna.training.inputs import CropInputs

log = logging.getLogger(__name__)

DEFAULT_CONFIG = resources.files("luna.configs") / "default.yaml"  # configs/, installed as package data
SUBCOMMANDS = ("fit", "validate", "test", "predict")


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
        # what the network takes and predicts follows the data (both tasks' modules take these)
        for linked in (
            "input_widths_irc",
            "input_spacings_mm",
            "input_intensity",
            "num_classes",
            "class_names",
        ):
            parser.link_arguments(f"data.{linked}", f"model.init_args.{linked}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then read a ``--ckpt_path`` safely (before Lightning loads its hyperparameters):
        a missing, empty, truncated or untrusted file is one line here, not a traceback."""
        super().parse_arguments(parser, args)
        self._checkpoint_hparams: dict | None = None
        self._checkpoint_task = None
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path not in CHECKPOINT_KEYWORDS:
            trusted = "(none: Lightning loads only what torch loads safely)"
            checkpoint = read_checkpoint(path, trust_option=trusted)
            self._checkpoint_hparams = checkpoint.get("hyper_parameters", {})
            self._checkpoint_task = task_of(checkpoint)
            # Checked here: Lightning next replaces the configured model class by the checkpoint's.
            module_name, _, class_name = self.config[subcommand]["model"]["class_path"].rpartition(".")
            model_class = getattr(importlib.import_module(module_name), class_name)
            expected = "segmentation" if issubclass(model_class, SegmentationModule) else "classification"
            check_task(path, self._checkpoint_task, expected, "--ckpt_path")

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
        if self._checkpoint_task is None:
            return
        path = self.config_init[self.subcommand].get("ckpt_path")
        data = self.datamodule
        crops = CropInputs.of(data.input_widths_irc, data.input_spacings_mm, data.input_intensity)
        check_fits(
            path,
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
        run = evaluated_run(self.subcommand, config.get("ckpt_path"), root)
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
        kwargs.update(console_options(trainer_config))
        kwargs.update(checkpoint_plugins(trainer_config))
        return super().instantiate_trainer(**kwargs)
