"""``python -m luna.crossval``: LUNA16's ten-fold cross-validation (``luna.cli.crossval``)."""

import sys

from luna.cli.crossval import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
