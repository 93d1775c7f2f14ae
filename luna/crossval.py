"""``python -m luna.crossval``: LUNA16's ten-fold cross-validation (``luna.cli.crossval``)."""

from luna.cli.crossval import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
