"""``python -m luna.fit``: train, validate, test and predict (the Lightning CLI in ``luna.cli.fit``)."""

from luna.cli.fit import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
