"""Figures of an evaluation, each readable without the code: titled with stage and epoch, axes and
thresholds labelled. Pure matplotlib on numpy (``matplotlib.figure.Figure``, never ``pyplot``).

Each builder takes an ``EvaluationOutcome`` (see ``luna.metrics.stage``) and returns a ``Figure``, or
None when it does not apply (a PR curve needs two classes, a FROC needs evaluated scans).
``luna.callbacks.figures.ValidationFigures`` draws and logs them after every validation and test.
Crops are drawn in the data's own intensity window (``display_window``): CT in Hounsfield units
in the lung window, anything else over the whole stored range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from luna.evaluation.figures import froc_figure

if TYPE_CHECKING:
    from luna.metrics.segmentation import SegmentationOutcome
    from luna.metrics.stage import EvaluationOutcome

ImageName = Callable[[int], str]
LUNG_WINDOW_HU = (-1000.0, 400.0)  # how CT candidates are shown: air black, soft tissue and nodules white


def display_window(intensity: Sequence[float] | None) -> tuple[float, float]:
    """The range of stored values drawn from black to white, for crops stored with ``intensity``
    (``[window low, window high, scale]``): the lung window when the values are Hounsfield units
    that cover it (scale 1; CT as luna stores it, or unknown), the whole stored range otherwise
    (MRI, or any other window)."""
    if intensity is None:
        return LUNG_WINDOW_HU
    low, high, scale = (float(value) for value in intensity)
    if scale == 1 and low <= LUNG_WINDOW_HU[0] and high >= LUNG_WINDOW_HU[1]:
        return LUNG_WINDOW_HU
    return low * scale, high * scale


def _title(outcome: EvaluationOutcome, what: str) -> str:
    return f"{outcome.stage} {what}, epoch {outcome.epoch}"


def pr_curve_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """Precision against recall, with the average precision and the operating point at the threshold."""
    if outcome.pr_curve is None:
        return None
    precision, recall, thresholds = (outcome.pr_curve[k] for k in ("precision", "recall", "thresholds"))
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    stage = outcome.stage
    scalars = outcome.scalars
    average_precision = scalars.get(f"{stage}/average_precision", float("nan"))
    ax.plot(recall, precision, drawstyle="steps-post", label=f"PR curve (AP {average_precision:.3f})")
    ax.plot(
        scalars[f"{stage}/recall"],
        scalars[f"{stage}/precision"],
        "o",
        color="C3",
        label=f"threshold {outcome.threshold:g}: F1 {scalars[f'{stage}/f1']:.3f}",
    )
    if np.isfinite(scalars.get(f"{stage}/f1_best", np.nan)) and len(thresholds):
        at = int(np.argmin(np.abs(thresholds - scalars[f"{stage}/f1_best_threshold"])))
        ax.plot(
            recall[at],
            precision[at],
            "s",
            color="C2",
            mfc="none",
            label=f"best F1 {scalars[f'{stage}/f1_best']:.3f} at {scalars[f'{stage}/f1_best_threshold']:.3g} "
            "(optimistic)",
        )
    positives = int(outcome.confusion[1].sum())
    ax.axhline(
        positives / max(outcome.confusion.sum(), 1),
        color="grey",
        ls=":",
        lw=1,
        label="chance (positive rate)",
    )
    ax.set(
        xlabel=f"recall ({outcome.class_names[1]})",
        ylabel="precision",
        xlim=(0, 1.02),
        ylim=(0, 1.05),
        title=_title(outcome, "precision-recall"),
    )
    ax.legend(loc="lower left", fontsize=8)
    return fig


def confusion_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure:
    """Counts per (true, predicted) class, with row-normalised shading."""
    matrix = outcome.confusion
    names = outcome.class_names
    n = len(names)
    fig = Figure(figsize=(1.4 * n + 2.6, 1.2 * n + 2), layout="constrained")
    ax = fig.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{int(count)}\n{share[i, j]:.0%}",
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.6 else "black",
            fontsize=10,
        )
    ax.set_xticks(range(n), names, rotation=30 if n > 3 else 0)
    ax.set_yticks(range(n), names)
    rule = f"P({names[1]}) >= {outcome.threshold:g}" if outcome.binary else "most probable class"
    ax.set(xlabel=f"predicted ({rule})", ylabel="true class", title=_title(outcome, "confusion matrix"))
    return fig


def wilson_interval(
    successes: np.ndarray, count: np.ndarray, z: float = 1.96
) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a rate (95 % by default): honest for small bins and rates near
    0 or 1, where the normal approximation's interval leaves [0, 1] or collapses to a point."""
    count = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = successes / count
        centre = (rate + z**2 / (2 * count)) / (1 + z**2 / count)
        half = z / (1 + z**2 / count) * np.sqrt(rate * (1 - rate) / count + z**2 / (4 * count**2))
    # The interval always holds the observed rate; rounding near 0 and 1 can put a bound a hair past
    # it (or past [0, 1]), which matplotlib then refuses as a negative error bar.
    return np.clip(np.minimum(centre - half, rate), 0, 1), np.clip(np.maximum(centre + half, rate), 0, 1)


def reliability_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure:
    """Observed rate against mean confidence per non-empty bin, with its 95 % interval (small bins
    are visibly uncertain), the ECE, and below it how many samples each bin holds."""
    bins = outcome.reliability
    count, confidence, rate = bins["count"], bins["confidence"], bins["rate"]
    filled = count > 0
    edges = np.linspace(0, 1, len(count) + 1)
    fig = Figure(figsize=(5, 6), layout="constrained")
    ax, counts_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    low, high = wilson_interval(rate[filled] * count[filled], count[filled])
    ax.errorbar(
        confidence[filled],
        rate[filled],
        yerr=[rate[filled] - low, high - rate[filled]],
        fmt="o-",
        color="C0",
        capsize=3,
        label="observed rate per bin, 95 % interval",
    )
    if outcome.binary:
        what = f"P({outcome.class_names[1]})", f"fraction that are {outcome.class_names[1]}"
    else:
        what = "confidence of the predicted class", "fraction predicted correctly"
    ece = outcome.scalars.get(f"{outcome.stage}/calibration_error", float("nan"))
    ax.set(ylabel=what[1], xlim=(0, 1), ylim=(0, 1), title=_title(outcome, f"reliability (ECE {ece:.3f})"))
    ax.legend(loc="upper left", fontsize=8)
    counts_ax.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="C0", alpha=0.5, edgecolor="k")
    counts_ax.set_yscale("log" if count.max() > 100 * max(count[filled].min(), 1) else "linear")
    counts_ax.set(xlabel=what[0], ylabel="samples per bin")
    return fig


MISTAKES_PER_ROW = 4


def _crosshair(ax, row: float, column: float, size: float, aspect: float) -> None:
    """Four short arms around (row, column), leaving the candidate itself visible; ``size`` in
    columns, the row arms shortened by the pixels' ``aspect`` so that all four look alike."""
    xs, ys = [], []
    for d_row, d_column in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        scale = size / aspect if d_row else size
        xs += [column + d_column * scale, column + 2 * d_column * scale, np.nan]
        ys += [row + d_row * scale, row + 2 * d_row * scale, np.nan]
    ax.plot(xs, ys, color="red", lw=1.2)


SALIENCY_MAP = "bwr"  # red: evidence for the probability shown, blue: against it
SALIENCY_NOTE = "\ncolour: occlusion sensitivity of the probability given (red: evidence for it)"


def _saliency_planes(mistakes: dict[str, np.ndarray], k: int) -> tuple[dict[str, np.ndarray], float] | None:
    """Mistake ``k``'s saliency planes (``luna.training.saliency``) and their symmetric colour
    limit, or None when the evaluation computed none."""
    if "saliency_axial" not in mistakes:
        return None
    planes = {plane: mistakes[f"saliency_{plane}"][k] for plane in ("axial", "coronal", "sagittal")}
    peak = max(float(np.abs(values).max()) for values in planes.values())
    return planes, peak or 1.0


def saliency_overlay(gray: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[h, w, 3]``: a uint8 slice with its saliency over it (the montage's colours)."""
    from matplotlib import colormaps

    peak = float(np.abs(saliency).max()) or 1.0
    colour = colormaps[SALIENCY_MAP]((saliency / peak + 1) / 2)[..., :3]
    base = np.repeat(gray[..., None] / 255.0, 3, axis=2)
    return np.round((0.6 * base + 0.4 * colour) * 255).astype(np.uint8)


def mistakes_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """The most confident mistakes of each true class: axial, coronal and sagittal slices through
    the candidate (marked, drawn at the crop's true voxel aspect, in the data's display window),
    the probability the model gave, the series and the centre in millimetres."""
    rows = [
        (true_class, mistakes)
        for true_class, mistakes in enumerate(outcome.mistakes)
        if len(mistakes["score"])
    ]
    if not rows:
        return None
    names = outcome.class_names
    low, high = outcome.display_window
    columns = min(MISTAKES_PER_ROW, max(len(mistakes["score"]) for _, mistakes in rows))
    blocks = [
        (true_class, mistakes, start)
        for true_class, mistakes in rows
        for start in range(0, len(mistakes["score"]), columns)
    ]
    fig = Figure(figsize=(4.6 * columns + 0.5, 2.4 * len(blocks) + 0.6), layout="constrained")
    panels = fig.subfigures(len(blocks), columns, squeeze=False, wspace=0.03, hspace=0.03)
    name = image_name or (lambda image: f"image #{image}")
    for block, (true_class, mistakes, start) in enumerate(blocks):
        for column in range(columns):
            panel, k = panels[block, column], start + column
            if k >= len(mistakes["score"]):
                continue
            i, r, c = mistakes["marker"][k]
            spacing_i, spacing_r, spacing_c = mistakes["voxel_mm"][k]
            planes = (
                ("axial", r, c, spacing_r / spacing_c),
                ("coronal", i, c, spacing_i / spacing_c),
                ("sagittal", i, r, spacing_i / spacing_r),
            )
            heat = _saliency_planes(mistakes, k)
            for ax, (plane, row, col, aspect) in zip(panel.subplots(1, 3), planes, strict=True):
                pixels = mistakes[plane][k]
                ax.imshow(pixels, cmap="gray", vmin=low, vmax=high, aspect=aspect)
                if heat is not None:
                    ax.imshow(
                        heat[0][plane],
                        cmap=SALIENCY_MAP,
                        alpha=0.4,
                        vmin=-heat[1],
                        vmax=heat[1],
                        aspect=aspect,
                    )
                _crosshair(ax, row, col, size=0.12 * pixels.shape[1], aspect=aspect)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(plane, fontsize=8, labelpad=1)
            predicted = names[int(mistakes["predicted"][k])]
            x, y, z = mistakes["center"][k]
            if outcome.binary:
                p_positive = mistakes["score"][k] if true_class == 0 else 1 - mistakes["score"][k]
                said = f"P({names[1]}) = {p_positive:.2f}"
            else:
                said = f"P({predicted}) = {mistakes['score'][k]:.2f}"
            panel.suptitle(
                f"{said}   {name(int(mistakes['image'][k]))}\n({x:.0f}, {y:.0f}, {z:.0f}) mm", fontsize=9
            )
            if column == 0 and start == 0:
                label = f"true {names[true_class]}"
                if outcome.binary:
                    label = "false positives" if true_class == 0 else "false negatives"
                panel.supylabel(label, fontsize=11)
    fig.suptitle(
        _title(
            outcome,
            f"most confident mistakes: three slices through each candidate (marked), "
            f"values {low:g} to {high:g}"
            + (" HU" if outcome.display_window == LUNG_WINDOW_HU else "")
            + (SALIENCY_NOTE if any("saliency_axial" in mistakes for _, mistakes in rows) else ""),
        ),
        fontsize=11,
    )
    return fig


def froc_evaluation_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """The FROC of this evaluation, when its data defines evaluated scans."""
    if outcome.froc is None:
        return None
    return froc_figure(outcome.froc, _title(outcome, "FROC"))


def segmentation_figure(outcome: SegmentationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """Axial slices of the first validation volumes, through each one's largest nodule: the mask
    (green) and the prediction above the threshold (red) drawn over the scan, and the probability
    map beside it."""
    if not outcome.examples:
        return None
    low, high = LUNG_WINDOW_HU
    fig = Figure(figsize=(6.4, 3.0 * len(outcome.examples) + 0.6), layout="constrained")
    axes = fig.subplots(len(outcome.examples), 2, squeeze=False)
    for row, (image, mask, probability) in enumerate(outcome.examples):
        scan, heat = axes[row]
        scan.imshow(image * 1000.0, cmap="gray", vmin=low, vmax=high)  # the network's [-1, 1] back to HU
        for values, color in ((mask, "lime"), (probability > outcome.threshold, "red")):
            if values.any() and not values.all():
                scan.contour(values.astype(float), levels=[0.5], colors=color, linewidths=1.0)
        shown = heat.imshow(probability, cmap="magma", vmin=0.0, vmax=1.0)
        for ax, label in ((scan, "scan: mask green, prediction red"), (heat, "probability")):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(label, fontsize=8)
        fig.colorbar(shown, ax=heat, fraction=0.046)
    dice, recall = (
        outcome.scalars.get(f"{outcome.stage}/{name}", float("nan")) for name in ("dice", "nodule_recall")
    )
    fig.suptitle(
        f"{outcome.stage} segmentation, epoch {outcome.epoch}: Dice {dice:.3f}, nodule recall {recall:.3f}",
        fontsize=10,
    )
    return fig
