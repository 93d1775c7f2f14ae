"""``python -m luna.evaluate PREDICTIONS.csv --data_dir DIR``: FROC and CPM (``luna.cli.evaluate``)."""

from luna.cli.evaluate import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
