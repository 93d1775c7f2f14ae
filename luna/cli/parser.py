"""luna's command-line parser: errors in one line, and a ``--help`` a user reads.

LightningCLI's own parser prints a page of usage for a mistyped key and documents every option of
Lightning's Trainer (800 lines). This one names the likely key, or the new name of a renamed one
(``luna.cli.errors``), refuses prefixes of an option, and condenses Lightning's sections to a
paragraph each (``--help_full`` shows everything).

It reads argparse's action groups (``_action_groups``, ``_group_actions``, ``_actions``): argparse
has no public API to list a parser's options; ``tests/test_lightning_contract.py`` guards them.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys
from typing import NoReturn

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser

from luna.cli.errors import option_error

# The sections whose options --help names without their (long, Lightning-written) documentation:
# section -> (title, description, the class whose own arguments are condensed; None: all)
CONDENSED = {
    "trainer": (
        "Lightning's Trainer",
        "As --trainer.NAME=VALUE: {names}. Their meaning: "
        "https://lightning.ai/docs/pytorch/stable/common/trainer.html, or --help_full; the values a "
        "run uses: --print_config.",
        None,
    ),
    "checkpoint": (
        None,
        "And Lightning's ModelCheckpoint arguments, as --checkpoint.NAME=VALUE: {names}. "
        "Their meaning: --help_full.",
        ModelCheckpoint,
    ),
    "data": (
        None,
        "LunaDataModule (LUNA16 or its phantom) unless a config chooses another "
        "(configs/points.yaml: PointsDataModule, a CSV of points in your own volumes). Its options, as "
        "--data.NAME=VALUE: python -m luna.fit --data.help LunaDataModule (or PointsDataModule, "
        "MalignancyDataModule, a class path of your own).",
        None,
    ),
}


# what --ckpt_path means to each subcommand (Lightning's text lists keywords a command line cannot use)
CKPT_HELP = {
    "fit": "a checkpoint to resume from (a run's checkpoints/last.ckpt): training goes on from its step, "
    "with its optimizer, random streams and data order",
    "validate": "the checkpoint to evaluate (a run's checkpoints/last.ckpt or best-*.ckpt); the results go "
    "into its run",
    "test": "the checkpoint to evaluate (a run's checkpoints/last.ckpt or best-*.ckpt); the results go "
    "into its run",
    "predict": "the checkpoint to predict with (a run's checkpoints/last.ckpt or best-*.ckpt); "
    "predictions.csv goes into its run",
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
        subcommand = self.prog.rsplit(" ", 1)[-1]
        for group in self._action_groups:  # Trainer.fit's own docstring titles the group "Runs the full..."
            for action in group._group_actions:
                if action.dest == "ckpt_path" and subcommand in CKPT_HELP:
                    group.title, action.help = "The checkpoint", CKPT_HELP[subcommand]
        if self.full_help:
            return super().format_help().replace("``", "")
        saved = []
        for group in self._action_groups:
            prefix = next((a.dest.split(".")[0] for a in group._group_actions if "." in a.dest), None)
            if prefix not in CONDENSED or not any(a.dest == prefix for a in group._group_actions):
                continue  # not the section itself (--data.help CLASS prints a class's own options in full)
            title, description, owner = CONDENSED[prefix]
            owned = set(inspect.signature(owner).parameters) if owner else None
            condensed = [
                a
                for a in group._group_actions
                if a.dest.startswith(f"{prefix}.")
                and a.dest != f"{prefix}.help"
                and (owned is None or a.dest.split(".")[1] in owned)
            ]
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
        """Every ``section.key`` of this parser; a subclass's arguments as ``section.key`` (no
        ``init_args``)."""

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
