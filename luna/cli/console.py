"""What every luna command prints besides its result: luna's own log lines, on stderr, one line each.

Every command calls ``setup_logging`` once, so that the cache builder, the phantom generators
and the CLI speak the same way whichever command runs them; library code only logs.
"""

from __future__ import annotations

import logging
import sys


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes: Rich's progress bar
    replaces it while it draws, and lines then appear above the bar instead of through it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Dropping(logging.Filter):
    """Drops Lightning's lines that a user can do nothing about (its tip to install its cloud logger,
    on every command; "`weights_only` was not set" when its SLURM handler saves before a requeue)
    or that luna says better ("`Trainer.fit` stopped", printed before the last epoch's line: luna's
    summary says why training finished)."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def setup_logging() -> None:
    """luna's INFO lines (and warnings) on stderr as plain messages; a caller's own setup is kept."""
    if not logging.getLogger().handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger().addHandler(handler)
    logging.getLogger("luna").setLevel(logging.INFO)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        _Dropping("litlogger", "`Trainer.fit` stopped")
    )
    logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").addFilter(
        _Dropping("`weights_only` was not set")
    )
