"""LUNA16's FROC (CPM) as a torchmetrics metric: the marks of every process, scored once.

The scoring itself is ``luna.evaluation.froc`` (pure numpy); this class only gathers the marks.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from luna.evaluation.froc import FrocResult, Marks, Reference, froc
from luna.metrics.lists import cat_state


class FrocMetric(Metric):
    """LUNA16's FROC analysis (CPM) over the marks of one evaluation, exact under DDP.

    Each sample is a mark: its image number, centre and P(nodule). The lists are gathered from
    every process (the evaluation samplers never repeat a sample), and every process scores the
    same marks against the same ``reference``, so all get the same result. ``compute`` returns
    the CPM (NaN without a reference) and keeps the whole analysis (the curve, the counts) in
    ``analysis`` for the figures.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("image", default=[], dist_reduce_fx="cat")
        self.add_state("center_xyz", default=[], dist_reduce_fx="cat")
        self.add_state("probability", default=[], dist_reduce_fx="cat")
        self.reference: Reference | None = None
        self.analysis: FrocResult | None = None
        self._scan_of_image = np.empty(0, dtype=np.int64)

    def set_reference(self, reference: Reference | None, image_ids: list[str]) -> None:
        """Score against ``reference``; ``image_ids[n]`` is the id of image number ``n`` in batches."""
        self.reference = reference
        if reference is not None:
            index = reference.scan_index()
            self._scan_of_image = np.array(
                [index.get(image_id, -1) for image_id in image_ids], dtype=np.int64
            )

    def update(self, image: torch.Tensor, center_xyz: torch.Tensor, probability: torch.Tensor) -> None:
        self.image.append(image)
        self.center_xyz.append(center_xyz.double())
        self.probability.append(probability.double())

    def compute(self) -> torch.Tensor:
        """The CPM of the gathered marks on the reference's scans; the analysis goes to ``analysis``."""
        self.analysis = None
        if self.reference is None:
            return torch.tensor(float("nan"), dtype=torch.float64)
        image = cat_state(self.image, torch.int64).cpu().numpy()
        centers = cat_state(self.center_xyz, torch.float64, 3).cpu().numpy()
        probability = cat_state(self.probability, torch.float64).cpu().numpy()
        scan = self._scan_of_image[image] if len(image) else image
        keep = scan >= 0
        self.analysis = froc(Marks(scan[keep], centers[keep], probability[keep]), self.reference)
        return torch.tensor(self.analysis.cpm, dtype=torch.float64)
