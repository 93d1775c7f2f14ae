"""``python -m luna.fit``: the Lightning CLI of luna (also installed as the ``luna`` command).

    python -m luna.fit                                   # train on phantom data (configs/default.yaml)
    python -m luna.fit --config configs/luna16.yaml --data.data_dir=/data/LUNA16
    python -m luna.fit validate --ckpt_path=PATH         # also: test, predict
    python -m luna.fit --help | --print_config

Without a subcommand, ``fit`` is meant. ``configs/default.yaml`` is always read first; every
``--config`` file and ``--section.key=value`` after it overrides what comes before.
"""

from __future__ import annotations

import signal
import sys
import warnings

from pytorch_lightning import Callback
from pytorch_lightning.cli import LightningArgumentParser
from pytorch_lightning.utilities.exceptions import SIGTERMException

from luna.cli.console import setup_logging
from luna.cli.errors import run_command
from luna.cli.lightning_cli import DEFAULT_CONFIG, SUBCOMMANDS, LunaCLI, RunConfig
from luna.cli.parser import LunaArgumentParser
from luna.cli.run_folder import discard_unused_runs, forget_claimed_runs
from luna.data.cache.read import CacheBuildError
from luna.data.volume import ScanReadError
from luna.luna16 import datamodule as _luna16_crops  # noqa: F401  (the known subclasses, by short name:
from luna.luna16 import segmentation as _luna16_volumes  # noqa: F401  --data.help LunaDataModule,
from luna.points import datamodule as _points  # noqa: F401  --model.help SegmentationModule)
from luna.segmentation import module as _segmentation  # noqa: F401
from luna.training.module import DivergenceError

USAGE = "python -m luna.fit [fit|validate|test|predict] [--config FILE ...] [--section.key=VALUE ...]"
DESCRIPTION = (
    "Train, validate, test and predict with luna: configs/default.yaml is read first, then every --config "
    "file and --section.key=VALUE in order. Without a subcommand, fit."
)
SUBCOMMAND_HELP = {
    "fit": "Train (and validate every epoch); --ckpt_path=PATH resumes a run from its checkpoint.",
    "validate": "Evaluate a checkpoint (--ckpt_path) on the validation split; writes into its run.",
    "test": "Evaluate a checkpoint (--ckpt_path) on data.eval_images (default: the validation split).",
    "predict": "Write each candidate's probabilities (--ckpt_path's model) to predictions.csv in its run.",
}
# what a user can cause and fix, besides bad values and files (ValueError, OSError): one line by `cli`
USER_ERRORS = (CacheBuildError, ScanReadError, DivergenceError)


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
    from pytorch_lightning import LightningDataModule, LightningModule

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
        LightningModule,  # the task: configs/default.yaml's LunaClassifier, or a config's own
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=parser_class,
        auto_configure_optimizers=False,  # the module's own --model.optimizer, not a second top-level one
        parser_kwargs=parser_kwargs,
        args=args,
        **cli_kwargs,
    )


def main(args: list[str] | None = None, extra_callbacks: list[Callback] | None = None) -> LunaCLI:
    """Run the CLI on ``args`` (default: the command line), with ``fit`` meant when no subcommand is
    given; ``extra_callbacks`` join the configured ones (``luna.tune`` adds its pruning this way)."""
    setup_logging()
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv.insert(0, "fit")
    subcommands = {
        subcommand: {
            "default_config_files": [str(DEFAULT_CONFIG)],
            "usage": USAGE,
            "description": SUBCOMMAND_HELP[subcommand],
            "prog": f"python -m luna.fit {subcommand}",
        }
        for subcommand in SUBCOMMANDS
    }
    try:
        cli = build_cli(
            LunaCLI,
            argv,
            LunaArgumentParser,
            {"prog": "python -m luna.fit", "usage": USAGE, "description": DESCRIPTION, **subcommands},
            seed_everything_default=True,  # the seed itself is configs/default.yaml's
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": list(extra_callbacks)} if extra_callbacks else None,
        )
    except BaseException:
        discard_unused_runs()
        raise
    forget_claimed_runs()
    return cli


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
