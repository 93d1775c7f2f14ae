"""An exported model: a folder in MONAI's bundle layout that runs without the training stack.

    BUNDLE/configs/metadata.json    MONAI's metadata (versions, the network's inputs and outputs) and,
                                    under "luna", what luna needs to cut its input from a volume: the
                                    views (crop size, spacing), the intensity window and scale, the
                                    classes, the threshold, and the SHA-256 of every other file
    BUNDLE/configs/inference.json   a MONAI bundle config: ``monai.bundle.ConfigParser`` builds the
                                    predictor (``luna.inference.load``) and the TorchScript network
    BUNDLE/configs/training.yaml    the configuration the model was trained with (when known)
    BUNDLE/models/model.ts          the network as TorchScript: crops -> class probabilities (a
                                    segmentation: a window -> voxel probabilities)
    BUNDLE/models/model.pt          the network's weights (a state dict), always
    BUNDLE/models/model.onnx        the same network as ONNX, where it exports
    BUNDLE/docs/README.md           what it is and how to run it

Reading a bundle checks every file against its checksum before anything runs: a missing or
altered file is refused with one line naming it. This module imports torch and the standard
library only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT_VERSION = 1
METADATA = "configs/metadata.json"
INFERENCE = "configs/inference.json"
TRAINING = "configs/training.yaml"
TORCHSCRIPT = "models/model.ts"
WEIGHTS = "models/model.pt"
ONNX = "models/model.onnx"
README = "docs/README.md"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong with it."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle says of its model (``metadata.json``'s ``luna`` section).

    Attributes:
        path: the bundle's folder.
        task: ``classification`` (crops around points -> classes) or ``segmentation`` (a volume
            -> voxel probabilities).
        views: per view, ``(width_irc, spacing_mm or None)``: the crops the network takes
            (a segmentation: its sliding window and the grid's spacing).
        intensity: ``(window low, window high, scale)`` of the stored values.
        class_names: one name per class.
        threshold: the decision threshold (classification: on P(class 1); segmentation: a voxel's).
        settings: the rest of the section (segmentation: overlap, windows per batch).
    """

    path: Path
    task: str
    views: tuple[tuple[tuple[int, int, int], tuple[float, float, float] | None], ...]
    intensity: tuple[float, float, float]
    class_names: list[str]
    threshold: float
    settings: dict


def read_bundle(path: str | Path) -> BundleInfo:
    """A bundle's metadata, with every file it lists checked against its SHA-256.

    Raises:
        BundleError: no such folder, a missing, altered or unreadable file (named), or metadata
            that is not a luna bundle's.
    """
    path = Path(path)
    metadata_path = path / METADATA
    if not path.is_dir():
        raise BundleError(
            f"bundle {path} does not exist (expected a folder written by python -m luna.export)"
        )
    if not metadata_path.is_file():
        raise BundleError(f"bundle {path}: {METADATA} is missing")
    try:
        luna = json.loads(metadata_path.read_text())["luna"]
        checksums = dict(luna["checksums"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise BundleError(f"bundle {path}: {METADATA} is damaged or not a luna bundle's ({error})") from None
    if luna.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"bundle {path}: format {luna.get('format_version')}, this luna reads {FORMAT_VERSION}"
        )
    for name, expected in sorted(checksums.items()):
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path}: {name} is missing")
        if sha256(file) != expected:
            raise BundleError(f"bundle {path}: {name} was altered (its SHA-256 differs from metadata.json's)")
    views = tuple(
        (tuple(view["width_irc"]), None if view["spacing_mm"] is None else tuple(view["spacing_mm"]))
        for view in luna["views"]
    )
    intensity = luna["intensity"]
    return BundleInfo(
        path,
        luna["task"],
        views,
        (*intensity["window"], intensity["scale"]),
        list(luna["class_names"]),
        float(luna["threshold"]),
        dict(luna.get("settings", {})),
    )


def load_torchscript(info: BundleInfo, device: torch.device) -> torch.jit.ScriptModule:
    """The bundle's TorchScript network, in eval mode on ``device``.

    Raises:
        BundleError: the bundle holds no TorchScript (its network would not script or trace).
    """
    file = info.path / TORCHSCRIPT
    if not file.is_file():
        luna = json.loads((info.path / METADATA).read_text())["luna"]
        raise BundleError(
            f"bundle {info.path} holds no TorchScript network ({luna.get('torchscript')}); its weights "
            f"are in {WEIGHTS}, for the network class in {TRAINING}"
        )
    return torch.jit.load(str(file), map_location=device).eval()
