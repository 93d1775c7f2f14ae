"""Writing a bundle (``python -m luna.export``): a trained model out of the training stack.

The network is wrapped so that the exported graph gives what a user wants, not what training
needed: a classifier's class probabilities (the softmax of its logits, with the prior correction
and test-time flips when asked for, averaged over the members of an ensemble), a segmentation's
logits per window. It is traced with ``torch.jit.trace`` (scripted when tracing fails) and
checked against the eager network on other inputs; ONNX is written as well when the legacy
exporter takes the network. A network that neither traces nor scripts is exported as weights,
with the reasons recorded.
"""

from __future__ import annotations

import io
import logging
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from luna.detection.networks import TrainedNetwork, load_trained
from luna.inference.bundle import (
    FORMAT_VERSION,
    INFERENCE,
    METADATA,
    ONNX,
    README,
    TORCHSCRIPT,
    TRAINING,
    WEIGHTS,
    sha256,
)
from luna.io.files import write_atomic, write_json_atomic, write_text_atomic
from luna.models.outputs import logits_of
from luna.training.checkpoints import FREQUENCIES_KEY, CheckpointError, read_checkpoint, task_of

log = logging.getLogger(__name__)


class ClassifierGraph(nn.Module):
    """Crops of every view -> class probabilities: softmax(logits + shift), averaged over the members
    and the test-time flips (every view flipped alike)."""

    def __init__(self, members: list[nn.Module], shift: torch.Tensor, flips: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("shift", shift.float())
        self.flips = [tuple(d + 2 for d in dims) for dims in flips]

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        runs = []
        for dims in self.flips:
            flipped = [view.flip(dims) if dims else view for view in views]
            inputs = flipped[0] if len(flipped) == 1 else flipped
            runs += [
                torch.softmax(logits_of(member, inputs).float() + self.shift, dim=1)
                for member in self.members
            ]
        return torch.stack(runs).mean(0)


def _graph(trained: list[TrainedNetwork], shift: np.ndarray, flips: list[tuple[int, ...]]) -> nn.Module:
    if trained[0].task == "segmentation":
        return trained[0].network.eval()
    return ClassifierGraph([t.network for t in trained], torch.as_tensor(shift), flips).eval()


def _examples(trained: TrainedNetwork, seed: int, level: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Inputs of the network's shape, uniform around ``level`` (-1: air, 0: mid-window, 1: the
    window's top): crops of stored HU values (classifier), a normalised window (segmentation)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 1.0 if trained.task == "segmentation" else 1000.0
    widths = trained.inputs.widths_irc[:1] if trained.task == "segmentation" else trained.inputs.widths_irc
    batch = 1 if trained.task == "segmentation" else 2
    spread = 1.0 - abs(level)
    return tuple(
        ((torch.rand(batch, 1, *width, generator=generator) * 2 - 1) * spread + level) * scale
        for width in widths
    )


CHECKS = ((1, 0.0), (2, -0.8), (3, 0.8))  # (seed, level): mid-window, near air, near the top


def _torchscript(graph: nn.Module, trained: TrainedNetwork) -> tuple[torch.jit.ScriptModule | None, str]:
    """The graph as TorchScript (traced, else scripted) and how it was made. It is checked against
    the eager graph on inputs of other levels: a branch on a value, frozen by tracing, shows there
    (tracing's own warnings are left out for that reason)."""
    reasons = []
    for how in ("traced", "scripted"):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                module = (
                    torch.jit.trace(graph, _examples(trained, 0))
                    if how == "traced"
                    else torch.jit.script(graph)
                )
                for seed, level in CHECKS:
                    check = _examples(trained, seed, level)
                    if not torch.allclose(module(*check), graph(*check), atol=1e-5, rtol=1e-4):
                        raise RuntimeError(
                            f"its outputs differ from the network's on inputs at level {level}"
                        )
            return module, how
        except Exception as error:  # noqa: BLE001 - any failure of one route: the other, then the weights alone
            reasons.append(f"not {how}: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}")
    return None, "; ".join(reasons)


def _onnx(graph: nn.Module, trained: TrainedNetwork, path: Path) -> str:
    """Write the graph as ONNX (the legacy exporter), or say why not. The exporter's notes are left
    out: its deprecation, tracing's (the TorchScript is checked above) and instance norm's
    ``train=True``, which is what InstanceNorm without running statistics always computes."""
    try:
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
            torch.onnx.export(
                graph,
                _examples(trained, 0),
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=[f"view{k}" for k in range(len(_examples(trained, 0)))],
                output_names=["output"],
            )
    except Exception as error:  # noqa: BLE001 - ONNX is written where the network exports
        return f"not written: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    data = buffer.getvalue()
    write_atomic(path, lambda handle: handle.write(data), len(data))
    return "written"


def _prior_shift(path: Path, classes: int, prior_correction: bool) -> np.ndarray:
    if not prior_correction:
        return np.zeros(classes)
    frequencies = read_checkpoint(path, trust_option="(none)").get(FREQUENCIES_KEY)
    if frequencies is None:
        raise CheckpointError(
            f"{path} does not record its training data's class frequencies (written before luna "
            "0.2.0 kept them): export it without --prior_correction"
        )
    return np.log(frequencies["natural"]) - np.log(frequencies["sampled"])


def _metadata(
    trained: TrainedNetwork,
    members: int,
    threshold: float,
    shift: np.ndarray,
    flips: list,
    torchscript: str,
    onnx: str,
    checksums: dict,
) -> dict:
    """``metadata.json``: MONAI's fields (schema of its model zoo) and luna's section."""
    inputs = trained.inputs
    spacings = inputs.spacings_mm or (None,) * len(inputs.widths_irc)
    low, high, scale = inputs.intensity or (-1000.0, 1000.0, 1.0)
    segmentation = trained.task == "segmentation"
    views = [
        {"width_irc": list(width), "spacing_mm": None if spacing is None else list(spacing)}
        for width, spacing in zip(inputs.widths_irc, spacings, strict=True)
    ]
    image = {
        f"view{k}": {
            "type": "image",
            "format": "hounsfield" if (low, high, scale) == (-1000, 1000, 1) else "magnitude",
            "num_channels": 1,
            "spatial_shape": view["width_irc"],
            "dtype": "float32",
            "value_range": [low * scale, high * scale],
            "is_patch_data": True,
            "channel_def": {"0": "image"},
        }
        for k, view in enumerate(views)
    }
    output = (
        {
            "type": "image",
            "format": "segmentation",
            "num_channels": 1,
            "spatial_shape": views[0]["width_irc"],
            "dtype": "float32",
            "value_range": [],
            "is_patch_data": True,
            "channel_def": {"0": "nodule logit"},
        }
        if segmentation
        else {
            "type": "probabilities",
            "format": "classes",
            "num_channels": len(trained.class_names),
            "spatial_shape": [len(trained.class_names)],
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": dict(enumerate(trained.class_names)),
        }
    )
    settings = {
        key: trained.hparams[key]
        for key in ("overlap", "windows_per_batch", "min_volume_mm3")
        if key in trained.hparams
    }
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by luna"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "required_packages_version": {"SimpleITK": _version("SimpleITK")},
        "task": "Lung nodule segmentation on CT"
        if segmentation
        else "Classification of 3D crops around points",
        "description": f"a luna {trained.task} model exported from {trained.path.name}"
        + (f" (ensemble of {members})" if members > 1 else ""),
        "authors": "luna",
        "copyright": "see the training data's licence",
        "network_data_format": {"inputs": image, "outputs": {"pred": output}},
        "luna": {
            "format_version": FORMAT_VERSION,
            "task": trained.task,
            "views": views,
            "intensity": {"window": [low, high], "scale": scale},
            "class_names": trained.class_names,
            "threshold": threshold,
            "prior_shift": shift.tolist(),
            "tta_flips": [list(f) for f in flips],
            "ensemble_members": members,
            "settings": settings,
            "torchscript": torchscript,
            "onnx": onnx,
            "python_version": platform.python_version(),
            "checksums": checksums,
        },
    }


def _inference_config() -> dict:
    """``configs/inference.json``: MONAI's ``ConfigParser`` builds the predictor and the network."""
    return {
        "imports": ["$import torch", "$from luna.inference import load as load_bundle"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network": f"$torch.jit.load(@bundle_root + '/{TORCHSCRIPT}', map_location=@device)",
        "predictor": "$load_bundle(@bundle_root, device=@device)",
    }


def _readme(trained: TrainedNetwork, metadata: dict) -> str:
    luna = metadata["luna"]
    views = ", ".join(
        f"{'x'.join(map(str, v['width_irc']))} voxels"
        + (f" at {'x'.join(f'{s:g}' for s in v['spacing_mm'])} mm" if v["spacing_mm"] else " (native)")
        for v in luna["views"]
    )
    run = (
        "python -m luna.infer BUNDLE --points POINTS.csv --output OUT.csv"
        if trained.task == "classification"
        else "python -m luna.infer CLASSIFIER_BUNDLE --segmentation BUNDLE --scans SCAN.nii.gz -o OUT.csv"
    )
    return (
        f"# luna {trained.task} model\n\nExported from `{trained.path}`. Input: {views}; intensities "
        "clipped to "
        f"{luna['intensity']['window']} and scaled by {luna['intensity']['scale']}. Classes: "
        f"{', '.join(trained.class_names)}; threshold {luna['threshold']}.\n\n    {run}\n\n"
        "In Python: `luna.infer.load(BUNDLE)(volume, points)`. TorchScript: "
        f"{luna['torchscript']}. ONNX: {luna['onnx']}.\n"
    )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def export_bundle(
    ckpt_path: str | Path,
    output: str | Path,
    ensemble: list[str | Path] = (),
    threshold: float | None = None,
    prior_correction: bool = False,
    tta_flips: list[list[int]] | None = None,
) -> Path:
    """Write the bundle of a luna checkpoint (and its ensemble's members) into ``output``; its folder.

    Raises:
        FileNotFoundError, CheckpointError: a checkpoint that cannot be used (named), members of
            another model, or a prior correction the checkpoint cannot give.
    """
    ckpt_path, output = Path(ckpt_path), Path(output)
    task = task_of(read_checkpoint(ckpt_path, trust_option="(none)"))
    trained = [
        load_trained(path, task, "--ckpt_path" if k == 0 else "--ensemble")
        for k, path in enumerate([ckpt_path, *ensemble])
    ]
    for member in trained[1:]:
        if member.inputs.differences(trained[0].inputs) or member.class_names != trained[0].class_names:
            raise CheckpointError(
                f"--ensemble: {member.path} was not trained on {trained[0].path}'s crops and classes"
            )
    if task == "segmentation" and (ensemble or prior_correction or tta_flips):
        raise ValueError("--ensemble, --prior_correction and --tta_flips are for classifiers")
    shift = _prior_shift(ckpt_path, len(trained[0].class_names), prior_correction)
    flips = [tuple(f) for f in (tta_flips or [[]])]
    graph = _graph(trained, shift, flips)
    for folder in ("configs", "models", "docs"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    module, torchscript = _torchscript(graph, trained[0])
    if module is not None:
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        data = buffer.getvalue()
        write_atomic(output / TORCHSCRIPT, lambda handle: handle.write(data), len(data))
    else:
        log.warning(
            "%s: the network does not trace or script (%s): exporting its weights only",
            ckpt_path,
            torchscript,
        )
    buffer = io.BytesIO()
    torch.save(graph.state_dict(), buffer)
    weights = buffer.getvalue()
    write_atomic(output / WEIGHTS, lambda handle: handle.write(weights), len(weights))
    onnx = _onnx(graph, trained[0], output / ONNX)
    config = ckpt_path.resolve().parent.parent / "config.yaml"
    if config.is_file():
        write_text_atomic(output / TRAINING, config.read_text())
    write_json_atomic(output / INFERENCE, _inference_config(), indent=1)
    if threshold is None:
        threshold = float(trained[0].hparams.get("threshold", 0.5))
    listed = [TORCHSCRIPT, WEIGHTS, ONNX, TRAINING, INFERENCE]
    checksums = {name: sha256(output / name) for name in listed if (output / name).is_file()}
    metadata = _metadata(trained[0], len(trained), threshold, shift, flips, torchscript, onnx, checksums)
    write_text_atomic(output / README, _readme(trained[0], metadata))
    metadata["luna"]["checksums"][README] = sha256(output / README)
    write_json_atomic(output / METADATA, metadata, indent=1)
    log.info("bundle %s written: %s (TorchScript %s; ONNX %s)", output, ckpt_path, torchscript, onnx)
    return output
