"""``python -m luna.evaluate PREDICTIONS.csv --data_dir DIR``: FROC and CPM (``luna.cli.evaluate``)."""

import sys

from luna.cli.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
