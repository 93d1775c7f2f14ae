"""``python -m luna.export --ckpt_path CKPT --output BUNDLE``: a trained model as a bundle
(``luna.cli.export``)."""

from luna.cli.export import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
