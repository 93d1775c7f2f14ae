"""A trained network out of its checkpoint, without the CLI: what ``luna.detect`` runs and what
``luna.export`` writes.

A luna checkpoint holds the network's weights (``network.*``), the module's hyperparameters (the
crops or window it takes, their spacing and intensities, the classes) and what it is
(``luna_task``). A network given by ``class_path`` in the run's config (a MONAI network, your
own) is not in the hyperparameters: it is rebuilt from the ``config.yaml`` of the run the
checkpoint sits in.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from luna.detection.pipeline import Stage
from luna.models.outputs import logits_of
from luna.segmentation.module import default_unet
from luna.training.checkpoints import CheckpointError, check_task, read_checkpoint, task_of
from luna.training.inputs import CropInputs
from luna.training.module import default_network


@dataclass
class TrainedNetwork:
    """A network with its weights loaded (in eval mode), and what it takes and predicts.

    Attributes:
        network: the network.
        task: ``classification`` or ``segmentation``.
        inputs: its crops (classifier) or window (segmentation), their spacings and intensities.
        class_names: one name per class (the segmentation's: background, nodule).
        hparams: the module's hyperparameters, as saved.
        path: the checkpoint.
    """

    network: nn.Module
    task: str
    inputs: CropInputs
    class_names: list[str]
    hparams: dict
    path: Path


def instantiate(spec: Any) -> Any:
    """A ``{"class_path": ..., "init_args": {...}}`` value (the config's form) made into its object."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        arguments = {key: instantiate(value) for key, value in (spec.get("init_args") or {}).items()}
        return getattr(importlib.import_module(module), name)(**arguments)
    if isinstance(spec, list):
        return [instantiate(value) for value in spec]
    return spec


def _configured_network(path: Path) -> nn.Module | None:
    """The network a run's ``config.yaml`` gives by class_path (None: the module's default)."""
    config = path.resolve().parent.parent / "config.yaml"
    if path.resolve().parent.name != "checkpoints" or not config.is_file():
        return None
    model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    spec = (model.get("init_args") or model).get("network")
    return instantiate(spec) if spec else None


def load_trained(path: str | Path, task: str, option: str) -> TrainedNetwork:
    """The network of a luna checkpoint of ``task``, its weights loaded, in eval mode.

    Raises:
        FileNotFoundError, CheckpointError: a missing, damaged or untrusted file, one of another
            task (a classifier given as ``option`` where a segmentation is wanted), or weights
            that do not fit the network the checkpoint describes.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, trust_option="(none: checkpoints are read safely)")
    check_task(path, task_of(checkpoint), task, option)
    hparams = checkpoint.get("hyper_parameters", {})
    if "state_dict" not in checkpoint or hparams.get("input_widths_irc") is None:
        raise CheckpointError(
            f"{option}: {path} is not a luna checkpoint (no hyperparameters and network weights)"
        )
    inputs = CropInputs.of_checkpoint(hparams, path)
    network = _configured_network(path)
    if network is None:
        network = (
            default_unet()
            if task == "segmentation"
            else default_network(
                [tuple(w) for w in hparams["input_widths_irc"]], int(hparams.get("num_classes", 2))
            )
        )
    weights = {
        key.removeprefix("network."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("network.")
    }
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(
            f"{option}: the weights of {path} do not fit its network ({str(error).splitlines()[0]})"
        ) from None
    if hparams.get("channels_last"):  # as the module ran it: oneDNN's fast 3D convolutions on CPU
        network = network.to(memory_format=torch.channels_last_3d)
    class_names = hparams.get("class_names") or [
        f"class{k}" for k in range(int(hparams.get("num_classes", 2)))
    ]
    return TrainedNetwork(network.eval(), task, inputs, list(class_names), dict(hparams), path)


def stage_of(trained: TrainedNetwork, device: torch.device) -> Stage:
    """A trained network as a stage of detection, on ``device``: a classifier gives its class
    probabilities, a segmentation its logits."""
    network = trained.network.to(device)
    if trained.task == "classification":

        def run(*views: torch.Tensor) -> torch.Tensor:
            return torch.softmax(
                logits_of(network, views[0] if len(views) == 1 else list(views)).float(), dim=1
            )
    else:
        run = network
    settings = {
        key: trained.hparams[key] for key in ("overlap", "windows_per_batch") if key in trained.hparams
    }
    return Stage(run, trained.inputs, str(trained.path), settings)
