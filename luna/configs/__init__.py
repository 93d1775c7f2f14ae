"""luna's YAML configs, shipped as package data (``configs/`` at the top of the checkout links here)."""
