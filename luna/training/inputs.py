"""What a network's input is made of, recorded with its weights: each view's crop and its intensities.

A network trained on 32x48x48 crops resampled to 1.25x0.7x0.7 mm gives plausible but wrong
probabilities on native 32x48x48 crops: the shapes agree, so nothing fails by itself. The
classifier therefore keeps, beside ``input_widths_irc``, the spacing of each view and the
intensity window and scale its crops were stored with (linked from the data by the CLI, saved in
every checkpoint). ``validate``, ``test``, ``predict``, a resumed ``fit`` and the members of an
ensemble compare them with the data's before anything runs, and an exported bundle carries them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml


def _option(view: int, name: str) -> str:
    return f"data.{name}" if view == 0 else f"data.extra_views[{view - 1}].{name}"


def _describe(width: tuple[int, ...], spacing: tuple[float, ...] | None) -> str:
    size = "x".join(map(str, width))
    return (
        f"{size} native voxels"
        if spacing is None
        else f"{size} voxels at {'x'.join(f'{s:g}' for s in spacing)} mm"
    )


@dataclass(frozen=True)
class CropInputs:
    """The crops a network takes: per view its voxels (I, R, C) and spacing, and the stored values.

    Attributes:
        widths_irc: each view's crop size.
        spacings_mm: each view's voxel size along I, R, C in millimetres; None: the scan's own voxels.
        intensity: ``(window low, window high, scale)``: values were ``round(clip(v, window) * scale)``;
            None when a checkpoint does not say (written before luna 0.2.0 recorded it).
    """

    widths_irc: tuple[tuple[int, int, int], ...]
    spacings_mm: tuple[tuple[float, float, float] | None, ...] | None
    intensity: tuple[float, float, float] | None

    @classmethod
    def of(cls, widths_irc, spacings_mm=None, intensity=None) -> CropInputs:
        """From the plain lists a checkpoint keeps (``input_widths_irc``, ``input_spacings_mm``,
        ``input_intensity``); a missing part stays None (unknown)."""
        widths = tuple(tuple(int(w) for w in width) for width in widths_irc)
        spacings = (
            None
            if spacings_mm is None
            else tuple(
                None if spacing is None else tuple(float(s) for s in spacing) for spacing in spacings_mm
            )
        )
        return cls(widths, spacings, None if intensity is None else tuple(float(v) for v in intensity))

    @classmethod
    def of_checkpoint(cls, hparams: dict, path: str | Path | None = None) -> CropInputs | None:
        """What a checkpoint's network takes, from its hyperparameters; None when they do not say.

        A checkpoint written before the spacings were recorded is read with the ``config.yaml`` of
        the run it sits in (``<run>/checkpoints/x.ckpt``), which holds the data options.
        """
        if hparams.get("input_widths_irc") is None:
            return None
        spacings, intensity = hparams.get("input_spacings_mm"), hparams.get("input_intensity")
        if spacings is None and path is not None:
            spacings, intensity = _from_run_config(Path(path), len(hparams["input_widths_irc"]))
        return cls.of(hparams["input_widths_irc"], spacings, intensity)

    def describe(self) -> str:
        """``32x48x48 voxels at 1.25x0.7x0.7 mm`` (views joined by ``+``)."""
        spacings = self.spacings_mm or (None,) * len(self.widths_irc)
        return " + ".join(
            _describe(width, spacing) for width, spacing in zip(self.widths_irc, spacings, strict=True)
        )

    def differences(self, given: CropInputs) -> list[str]:
        """What ``given`` (the data's crops) changes of these (a network's): one phrase per
        option, naming it; parts that either side leaves unknown are not compared."""
        if len(given.widths_irc) != len(self.widths_irc):
            return [
                f"{len(self.widths_irc)} view(s) against the data's {len(given.widths_irc)} "
                "(data.extra_views)"
            ]
        found = []
        for view, (mine, theirs) in enumerate(zip(self.widths_irc, given.widths_irc, strict=True)):
            if mine != theirs:
                found.append(f"{_option(view, 'width_irc')}={list(mine)}, the data gives {list(theirs)}")
        if self.spacings_mm is not None and given.spacings_mm is not None:
            for view, (mine, theirs) in enumerate(zip(self.spacings_mm, given.spacings_mm, strict=True)):
                if not _same(mine, theirs):
                    found.append(
                        f"{_option(view, 'spacing_mm')}={None if mine is None else list(mine)}, the data "
                        f"gives {None if theirs is None else list(theirs)}"
                    )
        if (
            self.intensity is not None
            and given.intensity is not None
            and not _same(self.intensity, given.intensity)
        ):
            found.append(
                f"data.intensity_window={list(self.intensity[:2])} and data.intensity_scale="
                f"{self.intensity[2]:g}, the data gives {list(given.intensity[:2])} and "
                f"{given.intensity[2]:g}"
            )
        return found


def _same(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) for x, y in zip(a, b, strict=True)
    )


def _from_run_config(path: Path, views: int) -> tuple[list | None, list | None]:
    """Spacings and intensity from the ``config.yaml`` of the run a checkpoint was written in."""
    folder = path.resolve().parent
    config_path = folder.parent / "config.yaml"
    if folder.name != "checkpoints" or not config_path.is_file():
        return None, None
    try:
        data = (yaml.safe_load(config_path.read_text()) or {}).get("data") or {}
    except yaml.YAMLError:
        return None, None
    options = data.get("init_args", data)
    extra = options.get("extra_views") or []
    spacings = [options.get("spacing_mm"), *((view or {}).get("spacing_mm") for view in extra)]
    if len(spacings) != views:
        return None, None
    window, scale = options.get("intensity_window"), options.get("intensity_scale")
    return spacings, None if window is None or scale is None else [*window, scale]
