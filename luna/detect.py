"""``python -m luna.detect``: from CT scans to their nodules (``luna.cli.detect``)."""

from luna.cli.detect import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
