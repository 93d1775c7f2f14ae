"""Where the model looked at its mistakes (``--evaluation.saliency=true``): occlusion maps
(``luna.models.saliency``) of the crops that the mistakes montage and the W&B candidate table show.

They are computed after the evaluation, from the crop cache (the batches are gone by then), with
the module's own probabilities: its test-time flips, prior correction and ensemble, so that the map
explains the very probability that the figure prints.
"""

from __future__ import annotations

import numpy as np
import torch

from luna.data.contract import CropData
from luna.metrics.mistakes import PLANES, planes_through
from luna.models.saliency import occlusion_map
from luna.training.module import LunaClassifier

SALIENCY_PLANES = tuple(f"saliency_{plane}" for plane in PLANES)


def occlusion_maps(
    module: LunaClassifier, data: CropData, indices: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """``[n, I, R, C]``: for the crops at cache ``indices``, the occlusion map of P(``classes[k]``) on
    the first view (the other views held fixed), in the module's evaluation mode."""
    indices = np.asarray(indices, dtype=np.int64)
    if not len(indices):
        return np.zeros((0, *data.input_widths_irc[0]), dtype=np.float32)
    batch = data.crops_at(indices)
    views = [batch["crop"], *(view["crop"] for view in batch["extra_views"])]
    views = [view.to(module.device).float() for view in views]
    low, _, scale = data.input_intensity

    def run(*crops: torch.Tensor) -> torch.Tensor:
        return module.probabilities(crops[0] if len(crops) == 1 else list(crops))

    training = module.training
    module.eval()
    try:
        maps = [
            occlusion_map(run, [view[k : k + 1] for view in views], int(class_index), low * scale)
            for k, class_index in enumerate(np.asarray(classes).tolist())
        ]
    finally:
        module.train(training)
    return np.stack(maps).astype(np.float32)


def with_saliency(
    mistakes: list[dict[str, np.ndarray]], module: LunaClassifier, data: CropData
) -> list[dict[str, np.ndarray]]:
    """The montage's mistakes (``EvaluationOutcome.mistakes``) with ``saliency_axial``,
    ``saliency_coronal`` and ``saliency_sagittal``: the occlusion map of the class each was wrongly
    given, through its marked voxel."""
    result = []
    for kept in mistakes:
        maps = occlusion_maps(module, data, kept["index"], kept["predicted"])
        planes = planes_through(torch.from_numpy(maps), torch.from_numpy(kept["marker"]).long())
        result.append({**kept, **{f"saliency_{plane}": planes[plane].numpy() for plane in PLANES}})
    return result
