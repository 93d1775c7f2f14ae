"""``python -m luna.tune``: hyperparameter sweeps and seed repeats (``luna.cli.tune``)."""

import sys

from luna.cli.tune import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
