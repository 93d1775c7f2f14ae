"""Where the classifier looks, two ways: occlusion sensitivity against Grad-CAM, on validation nodules.

    python scripts/bench_saliency.py CHECKPOINT [--data_dir DIR] [--nodules 60]

For each nodule crop of the validation split (the default job's phantom, or ``--data_dir``), both
maps of P(nodule) are computed (MONAI's ``OcclusionSensitivity``, as ``luna.inference.saliency``
runs it, and ``GradCAM`` on each of LunaModel's blocks); a map is right when its peak lies within the
nodule's radius of the candidate's centre. Prints, per method, the share of nodules it gets right
(with a Wilson 95 % interval) and its time per crop on this machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from luna.detection.networks import load_trained
from luna.luna16.datamodule import LunaDataModule
from luna.luna16.phantom import PhantomSpec
from luna.metrics.figures import wilson_interval
from luna.models.outputs import logits_of
from luna.models.saliency import occlusion_map


def peak_is_inside(
    saliency: np.ndarray, center_irc: np.ndarray, voxel_mm: np.ndarray, radius_mm: float
) -> bool:
    peak = np.array(np.unravel_index(np.argmax(saliency), saliency.shape))
    return float(np.linalg.norm((peak - center_irc) * voxel_mm)) < radius_mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--nodules", type=int, default=60)
    parser.add_argument("--only", default=None, help="only the methods whose name holds this text")
    args = parser.parse_args()
    trained = load_trained(args.checkpoint, "classification", "checkpoint")
    network = trained.network
    data = LunaDataModule(
        args.data_dir,
        phantom=None if args.data_dir else PhantomSpec(series=240),
        width_irc=trained.inputs.widths_irc[0],
        num_workers=0,
    )
    data.prepare_data()
    data.setup("validate")
    dataset = data.val_dataset
    nodules = [k for k in range(len(dataset)) if dataset.labels[k] == 1][: args.nodules]

    def probability(crops: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits_of(network, crops), dim=1)

    methods = {
        f"occlusion, {'x'.join(map(str, block)) if isinstance(block, tuple) else block}-voxel blocks, "
        f"overlap {overlap}": lambda crop, block=block, overlap=overlap: occlusion_map(
            probability, [crop], 1, -1000.0, block=block, overlap=overlap
        )
        for block, overlap in (
            (8, 0.5),
            (8, 0.0),
            ((4, 8, 8), 0.0),
            ((4, 8, 8), 0.25),
            ((4, 6, 6), 0.0),
            ((4, 8, 8), 0.5),
        )
    }
    from monai.visualize import GradCAM

    for block in ("block2", "block3", "block4"):
        cam = GradCAM(nn_module=_Logits(network), target_layers=f"network.{block}")
        methods[f"Grad-CAM on {block}"] = lambda crop, cam=cam: _upsampled(cam, crop)
    methods = {name: method for name, method in methods.items() if args.only is None or args.only in name}
    right = {name: 0 for name in methods}
    seconds = {name: 0.0 for name in methods}
    diameters = data.cache.column("diameter_mm")
    for k in nodules:
        sample = dataset[k]
        crop = torch.from_numpy(np.asarray(sample["crop"], dtype=np.float32))[None, None]
        center = sample["offset_irc"] - sample["window_irc"]
        radius = float(diameters[sample["index"]]) / 2
        for name, method in methods.items():
            start = time.perf_counter()
            saliency = method(crop)
            seconds[name] += time.perf_counter() - start
            right[name] += peak_is_inside(saliency, center, sample["voxel_mm"], radius)
    print(f"{len(nodules)} validation nodules of {args.checkpoint}")
    print("| method | peak within the nodule's radius | 95 % CI | seconds per crop |")
    print("| --- | --- | --- | --- |")
    for name in methods:
        low, high = wilson_interval(np.array([right[name]], float), np.array([len(nodules)], float))
        print(
            f"| {name} | {right[name] / len(nodules):.2f} ({right[name]}/{len(nodules)}) | "
            f"{low[0]:.2f}-{high[0]:.2f} "
            f"| {seconds[name] / len(nodules):.3f} |"
        )


def _upsampled(cam, crop: torch.Tensor) -> np.ndarray:
    """Grad-CAM's map at the last block's resolution, trilinearly upsampled to the crop here: the
    upsampled map MONAI's ``GradCAM.__call__`` returned peaked at the crop's corner voxel on this
    network even where its own map did not (monai 1.6.1)."""
    raw = cam.compute_map(crop, class_idx=1, layer_idx=-1)
    raw = torch.as_tensor(raw, dtype=torch.float32).detach()
    return torch.nn.functional.interpolate(raw, size=crop.shape[2:], mode="trilinear")[0, 0].numpy()


class _Logits(torch.nn.Module):
    """LunaModel's logits alone (Grad-CAM differentiates one output)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return logits_of(self.network, crops)


if __name__ == "__main__":
    main()
