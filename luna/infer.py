"""``python -m luna.infer BUNDLE ...``: an exported model on new volumes (``luna.cli.infer``), and
``luna.infer.load(bundle)(volume, points)`` in Python. Imports torch, never Lightning."""

from luna.cli.infer import cli, main
from luna.inference.predictor import load

__all__ = ["cli", "load", "main"]

if __name__ == "__main__":
    cli()
