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

    Each sample is a mark: its series number, centre and P(nodule). The lists are gathered from
    every process (the evaluation samplers never repeat a sample), and every process scores the
    same marks against the same ``reference``, so all get the same CPM.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("series", default=[], dist_reduce_fx="cat")
        self.add_state("center_xyz", default=[], dist_reduce_fx="cat")
        self.add_state("probability", default=[], dist_reduce_fx="cat")
        self.reference: Reference | None = None
        self._scan_of_series = np.empty(0, dtype=np.int64)

    def set_reference(self, reference: Reference | None, series_uids: list[str]) -> None:
        """Score against ``reference``; ``series_uids[n]`` is the uid of series number ``n`` in batches."""
        self.reference = reference
        if reference is not None:
            index = reference.scan_index()
            self._scan_of_series = np.array([index.get(uid, -1) for uid in series_uids], dtype=np.int64)

    def update(self, series: torch.Tensor, center_xyz: torch.Tensor, probability: torch.Tensor) -> None:
        self.series.append(series)
        self.center_xyz.append(center_xyz.double())
        self.probability.append(probability.double())

    def compute(self) -> dict[str, torch.Tensor]:
        """The marks of every process: ``series``, ``center_xyz``, ``probability``."""
        return {"series": cat_state(self.series, torch.int64), "center_xyz": cat_state(self.center_xyz, torch.float64, 3),
                "probability": cat_state(self.probability, torch.float64)}

    def result(self) -> FrocResult | None:
        """The FROC analysis of the gathered marks (None without a reference); collective."""
        if self.reference is None:
            return None
        gathered = {name: value.cpu().numpy() for name, value in self.compute().items()}
        series = gathered["series"].astype(np.int64)
        scan = self._scan_of_series[series] if len(series) else series
        keep = scan >= 0
        marks = Marks(scan[keep], gathered["center_xyz"].reshape(-1, 3)[keep], gathered["probability"].reshape(-1)[keep])
        return froc(marks, self.reference)
