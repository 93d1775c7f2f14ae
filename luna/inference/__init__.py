"""Exported models: bundles in MONAI's layout (``bundle``), written from checkpoints (``export``)
and run on new volumes without Lightning (``predictor``; ``luna.infer.load``)."""

from __future__ import annotations


def load(bundle, device=None):
    """``luna.inference.predictor.load``: the model of an exported bundle, checked and ready."""
    from luna.inference.predictor import load as load_bundle

    return load_bundle(bundle, device)
