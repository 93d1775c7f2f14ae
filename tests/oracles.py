"""Reference implementations the tests compare luna against: the book's records and crops, one
Python object per candidate, written for clarity, not speed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from luna.data.cache.build import CacheSettings
from luna.data.crops import DEFAULT_WIDTH_IRC, View, crop_starts
from luna.data.volume import HU_WINDOW, Volume
from luna.luna16.candidates import load_candidate_arrays
from luna.training.augment import Augmentation, ViewCrops, augment_views


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of ``candidates.csv`` after the join with ``annotations.csv`` (the book's
    ``CandidateInfoTuple``)."""

    series_uid: str
    center_xyz: tuple[float, float, float]
    is_nodule: bool
    diameter_mm: float


def load_candidates(
    annotations_csv: str | Path, candidates_csv: str | Path, series_uids: set[str] | None = None
) -> list[Candidate]:
    """``load_candidate_arrays`` as a list of records, in the reference order."""
    arrays = load_candidate_arrays(annotations_csv, candidates_csv, series_uids)
    uids = [arrays.series_uids[s] for s in arrays.series.tolist()]
    return [
        Candidate(uid, tuple(xyz), nodule, diameter)
        for uid, xyz, nodule, diameter in zip(
            uids,
            arrays.center_xyz.tolist(),
            arrays.is_nodule.tolist(),
            arrays.diameter_mm.tolist(),
            strict=True,
        )
    ]


def candidate_of(datamodule, index: int) -> Candidate:
    """The candidate behind a batch's ``index`` entry, from a LUNA16 DataModule's cache."""
    cache = datamodule.cache
    return Candidate(
        cache.image_ids[int(cache.image_of[index])],
        tuple(np.asarray(cache.center_xyz[index]).tolist()),
        bool(cache.labels[index]),
        float(cache.column("diameter_mm")[index]),
    )


def reference_crop(
    volume: Volume, center_xyz: Sequence[float], width_irc: Sequence[int] = DEFAULT_WIDTH_IRC
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The book's crop around a point: ``(int16 view of shape width_irc, center_irc)``."""
    center_irc = volume.xyz_to_irc(center_xyz)
    starts = crop_start(center_irc, width_irc, volume.voxels.shape)
    return volume.voxels[tuple(slice(s, s + w) for s, w in zip(starts, width_irc, strict=True))], center_irc


def crop_start(
    center_irc: Sequence[int], width_irc: Sequence[int], shape_irc: Sequence[int]
) -> tuple[int, ...]:
    """``crop_starts`` of one centre, as a tuple."""
    return tuple(int(start) for start in crop_starts(np.asarray(center_irc), width_irc, shape_irc)[0])


def native_settings(width_irc: Sequence[int], intensity_window: Sequence[float] = HU_WINDOW) -> CacheSettings:
    """One native crop of ``width_irc`` voxels per row: the book's cache."""
    return CacheSettings((View(tuple(width_irc)),), tuple(intensity_window))


def book_augmentation() -> Augmentation:
    """The book's chapter 12 augmentation, as ``configs/presets/book_augmentation.yaml`` sets it."""
    preset = Path(__file__).resolve().parents[1] / "configs" / "presets" / "book_augmentation.yaml"
    return Augmentation(**yaml.safe_load(preset.read_text())["model"]["augmentation"])


def book_affine(augmentation: Augmentation, flips: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 4]`` transforms in the model crop's normalised (x, y, z) frame, drawn as luna draws them."""
    from luna.training.augment import _draw_linear, _draw_shift

    return torch.cat([_draw_linear(augmentation, flips), _draw_shift(augmentation, flips)[:, :, None]], dim=2)


def augment(
    crops: torch.Tensor, window_irc: torch.Tensor, width_irc: Sequence[int], augmentation: Augmentation
) -> torch.Tensor:
    """``augment_views`` of a single view, rotating about the middle of the model crop (the book)."""
    return augment_views([ViewCrops(crops, window_irc, tuple(width_irc))], augmentation)[0]
