"""Reference implementations the tests compare luna against: the book's records and crops, one
Python object per candidate, written for clarity, not speed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna.data.crops import DEFAULT_WIDTH_IRC, crop_start
from luna.data.volume import Volume
from luna.luna16.candidates import load_candidate_arrays


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of ``candidates.csv`` after the join with ``annotations.csv`` (the book's
    ``CandidateInfoTuple``)."""

    series_uid: str
    center_xyz: tuple[float, float, float]
    is_nodule: bool
    diameter_mm: float


def load_candidates(annotations_csv: str | Path, candidates_csv: str | Path,
                    series_uids: set[str] | None = None) -> list[Candidate]:
    """``load_candidate_arrays`` as a list of records, in the reference order."""
    arrays = load_candidate_arrays(annotations_csv, candidates_csv, series_uids)
    uids = [arrays.series_uids[s] for s in arrays.series.tolist()]
    return [Candidate(uid, tuple(xyz), nodule, diameter) for uid, xyz, nodule, diameter in
            zip(uids, arrays.center_xyz.tolist(), arrays.is_nodule.tolist(), arrays.diameter_mm.tolist())]


def candidate_of(datamodule, index: int) -> Candidate:
    """The candidate behind a batch's ``index`` entry, from a LUNA16 DataModule's cache."""
    cache = datamodule.cache
    return Candidate(cache.image_ids[int(cache.image_of[index])], tuple(np.asarray(cache.center_xyz[index]).tolist()),
                     bool(cache.labels[index]), float(cache.column("diameter_mm")[index]))


def reference_crop(volume: Volume, center_xyz: Sequence[float],
                   width_irc: Sequence[int] = DEFAULT_WIDTH_IRC) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The book's crop around a point: ``(int16 view of shape width_irc, center_irc)``."""
    center_irc = volume.xyz_to_irc(center_xyz)
    starts = crop_start(center_irc, width_irc, volume.voxels.shape)
    return volume.voxels[tuple(slice(s, s + w) for s, w in zip(starts, width_irc))], center_irc
