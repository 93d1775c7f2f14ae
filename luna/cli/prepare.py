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

from luna.cli.console import setup_logging
from luna.cli.errors import run_command
from luna.cli.fit import DEFAULT_CONFIG, USER_ERRORS, LunaArgumentParser, LunaCLI
from luna.data.datamodule import CropDataModule
from luna.training.module import LunaClassifier

log = logging.getLogger("luna.prepare")  # not __name__: this module runs as __main__
USAGE = "python -m luna.prepare [--config FILE ...] [--data.key=VALUE ...]"
DESCRIPTION = ("Build the crop cache of a luna.fit configuration (same configs and options; only the data "
               "section matters), and train nothing.")


class PrepareCLI(LunaCLI):
    """``luna.fit``'s parser and configs; only the data is instantiated (no Trainer, no run folder)."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")


def main(args: list[str] | None = None) -> CropDataModule:
    """Build (or check and reuse, or finish) the cache the configuration's data module reads, open
    it and log its split; returns the data module, set up."""
    setup_logging()
    LunaArgumentParser.argv = list(sys.argv[1:] if args is None else args)
    cli = PrepareCLI(
        LunaClassifier,
        CropDataModule,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        parser_class=LunaArgumentParser,
        auto_configure_optimizers=False,
        parser_kwargs={"prog": "python -m luna.prepare", "usage": USAGE, "default_config_files": [str(DEFAULT_CONFIG)],
                       "description": DESCRIPTION},
        args=args,
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
