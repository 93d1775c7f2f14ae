"""``python -m luna.phantom luna16|points OUT_DIR``: phantom data in the layouts luna reads
(``luna.cli.phantom``)."""

from luna.cli.phantom import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
