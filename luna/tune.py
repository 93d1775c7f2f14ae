"""``python -m luna.tune``: hyperparameter sweeps and seed repeats (``luna.cli.tune``)."""

from luna.cli.tune import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
