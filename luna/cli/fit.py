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

from pytorch_lightning import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from luna.cli.console import setup_logging
from luna.cli.errors import run_command
from luna.cli.lightning_cli import DEFAULT_CONFIG, SUBCOMMANDS, LunaCLI, RunConfig, build_cli
from luna.cli.parser import LunaArgumentParser
from luna.cli.run_folder import discard_unused_runs, forget_claimed_runs
from luna.data.cache.read import CacheBuildError
from luna.data.volume import ScanReadError
from luna.points import datamodule as _points  # noqa: F401  (listed among the data's known subclasses)
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
