"""``python -m luna.prepare``: build the crop cache of a configuration, and train nothing.

    python -m luna.prepare --config configs/luna16.yaml [--data.build_processes=16] [--data.key=VALUE ...]

It reads the same configs and options as ``luna.fit`` (only the data section matters), so the cache
it builds is the one a later ``luna.fit`` with those options finds and reuses. On a cluster, build
it in a CPU job (``scripts/slurm/prepare.sbatch``) on shared storage before the GPU jobs start,
instead of holding GPUs while scans are read; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import logging
import sys

from pytorch_lightning.cli import LightningArgumentParser

from luna.cli.console import setup_logging
from luna.cli.errors import run_command
from luna.cli.fit import USER_ERRORS, build_cli
from luna.cli.lightning_cli import DEFAULT_CONFIG, LunaCLI
from luna.cli.parser import LunaArgumentParser
from luna.data.datamodule import CropDataModule

log = logging.getLogger("luna.prepare")  # not __name__: this module runs as __main__
USAGE = "python -m luna.prepare [--config FILE ...] [--data.key=VALUE ...]"
DESCRIPTION = (
    "Build the crop cache of a luna.fit configuration (same configs and options; only the data "
    "section matters), and train nothing."
)


class PrepareCLI(LunaCLI):
    """``luna.fit``'s parser and configs; only the data is used (no Trainer, no run folder)."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self.config_init["data"]


class PrepareArgumentParser(LunaArgumentParser):
    """``luna.fit``'s parser, whose ``--help`` shows what matters here: the configs and the data
    options (of ``LunaDataModule``; another data class lists its own with ``--data.help CLASS``)."""

    def format_help(self) -> str:
        from jsonargparse import ActionConfigFile

        from luna.luna16.datamodule import LunaDataModule

        shown = LightningArgumentParser(prog=self.prog, usage=self.usage, description=self.description)
        shown.add_argument(
            "-c", "--config", action=ActionConfigFile, help="a luna.fit config file (repeatable)"
        )
        shown.add_class_arguments(LunaDataModule, "data", skip={"phantom"})
        return shown.format_help().replace("``", "") + (
            "\nThe data class is the config's (configs/default.yaml: LunaDataModule); another class lists "
            "its "
            "options with --data.help CLASS (e.g. PointsDataModule). Every other luna.fit option is "
            "accepted and "
            "ignored.\n"
        )


def main(args: list[str] | None = None) -> CropDataModule:
    """Build (or check and reuse, or finish) the cache the configuration's data module reads, open
    it and log its split; returns the data module, set up."""
    setup_logging()
    cli = build_cli(
        PrepareCLI,
        list(sys.argv[1:] if args is None else args),
        PrepareArgumentParser,
        {
            "prog": "python -m luna.prepare",
            "usage": USAGE,
            "description": DESCRIPTION,
            "default_config_files": [str(DEFAULT_CONFIG)],
        },
        run=False,
        save_config_callback=None,
    )
    datamodule = cli.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    log.info("crop cache ready: %s; luna.fit with the same data options reuses it", datamodule.cache.path)
    return datamodule


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2), as ``luna.fit`` does."""
    run_command(lambda: main() and 0, USER_ERRORS)


if __name__ == "__main__":
    cli()
