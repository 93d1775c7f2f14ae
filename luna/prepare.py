"""``python -m luna.prepare``: build a configuration's crop cache without training (``luna.cli.prepare``)."""

from luna.cli.prepare import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
