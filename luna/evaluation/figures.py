"""Figures of an evaluation, each readable without the code: titled with stage and epoch, axes and
thresholds labelled. Pure matplotlib on numpy (``matplotlib.figure.Figure``, never ``pyplot``):
importing luna leaves the caller's matplotlib backend alone, and figures render headless.

Each builder takes an ``EvaluationOutcome`` (see ``luna.metrics.stage``) and returns a ``Figure``, or
None when it does not apply (a PR curve needs two classes, a FROC needs evaluated scans).
``luna.callbacks.figures.ValidationFigures`` draws and logs them after every validation and test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from luna.evaluation.froc import FrocResult
    from luna.metrics.stage import EvaluationOutcome

ImageName = Callable[[int], str]
OPERATING_POINTS = ("1/8", "1/4", "1/2", "1", "2", "4", "8")


def _title(outcome: EvaluationOutcome, what: str) -> str:
    return f"{outcome.stage} {what}, epoch {outcome.epoch}"


def pr_curve_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """Precision against recall, with the average precision and the operating point at the threshold."""
    if outcome.pr_curve is None:
        return None
    precision, recall, thresholds = (outcome.pr_curve[k] for k in ("precision", "recall", "thresholds"))
    # average precision: the step-wise area under the curve (torchmetrics' definition)
    average_precision = float(-np.sum(np.diff(recall) * precision[:-1])) if len(recall) > 1 else float("nan")
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(recall, precision, drawstyle="steps-post", label=f"PR curve (AP {average_precision:.3f})")
    stage = outcome.stage
    scalars = outcome.scalars
    ax.plot(scalars[f"{stage}/recall"], scalars[f"{stage}/precision"], "o", color="C3",
            label=f"threshold {outcome.threshold:g}: F1 {scalars[f'{stage}/f1']:.3f}")
    if np.isfinite(scalars.get(f"{stage}/f1_best", np.nan)) and len(thresholds):
        at = int(np.argmin(np.abs(thresholds - scalars[f"{stage}/f1_best_threshold"])))
        ax.plot(recall[at], precision[at], "s", color="C2", mfc="none",
                label=f"best F1 {scalars[f'{stage}/f1_best']:.3f} at {scalars[f'{stage}/f1_best_threshold']:.3g} "
                      "(optimistic)")
    positives = int(outcome.confusion[1].sum())
    ax.axhline(positives / max(outcome.confusion.sum(), 1), color="grey", ls=":", lw=1, label="chance (positive rate)")
    ax.set(xlabel=f"recall ({outcome.class_names[1]})", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.05),
           title=_title(outcome, "precision-recall"))
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
        ax.text(j, i, f"{int(count)}\n{share[i, j]:.0%}", ha="center", va="center",
                color="white" if share[i, j] > 0.6 else "black", fontsize=10)
    ax.set_xticks(range(n), names, rotation=30 if n > 3 else 0)
    ax.set_yticks(range(n), names)
    rule = f"P({names[1]}) >= {outcome.threshold:g}" if outcome.binary else "most probable class"
    ax.set(xlabel=f"predicted ({rule})", ylabel="true class", title=_title(outcome, "confusion matrix"))
    return fig


def reliability_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure:
    """Observed rate against mean confidence per non-empty bin, with bin counts and the ECE."""
    bins = outcome.reliability
    count, confidence, rate = bins["count"], bins["confidence"], bins["rate"]
    filled = count > 0
    edges = np.linspace(0, 1, len(count) + 1)
    fig = Figure(figsize=(5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    ax.bar(edges[:-1][filled], rate[filled], width=np.diff(edges)[filled], align="edge", alpha=0.35,
           edgecolor="k", color="C0", label="observed rate per bin")
    ax.plot(confidence[filled], rate[filled], "o-", color="C0", label="bin mean")
    for left, width, height, n in zip(edges[:-1][filled], np.diff(edges)[filled], rate[filled], count[filled]):
        ax.text(left + width / 2, min(height + 0.02, 0.95), f"n={int(n)}", ha="center", fontsize=7)
    if outcome.binary:
        what = f"P({outcome.class_names[1]})", f"fraction that are {outcome.class_names[1]}"
    else:
        what = "confidence of the predicted class", "fraction predicted correctly"
    ece = outcome.scalars.get(f"{outcome.stage}/calibration_error", float("nan"))
    ax.set(xlabel=what[0], ylabel=what[1], xlim=(0, 1), ylim=(0, 1),
           title=_title(outcome, f"reliability (ECE {ece:.3f})"))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def mistakes_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """The most confident mistakes of each true class: the slice through the candidate (marked),
    the probability the model gave, the series and the centre in millimetres."""
    rows = [(true_class, mistakes) for true_class, mistakes in enumerate(outcome.mistakes) if len(mistakes["score"])]
    if not rows:
        return None
    names = outcome.class_names
    columns = max(len(mistakes["score"]) for _, mistakes in rows)
    fig = Figure(figsize=(2.3 * columns + 0.6, 2.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    name = image_name or (lambda image: f"image #{image}")
    for row, (true_class, mistakes) in enumerate(rows):
        for column in range(columns):
            ax = axes[row, column]
            ax.set_axis_off()
            if column >= len(mistakes["score"]):
                continue
            ax.imshow(mistakes["slice"][column], cmap="gray", vmin=-1000, vmax=400)
            r, c = mistakes["marker"][column]
            ax.plot(c, r, marker="o", ms=16, mfc="none", mec="red", mew=1.2)
            predicted = names[int(mistakes["predicted"][column])]
            x, y, z = mistakes["center"][column]
            if outcome.binary:
                p_positive = mistakes["score"][column] if true_class == 0 else 1 - mistakes["score"][column]
                said = f"P({names[1]}) = {p_positive:.2f}"
            else:
                said = f"P({predicted}) = {mistakes['score'][column]:.2f}"
            ax.set_title(f"{said}\n{name(int(mistakes['image'][column]))}\n({x:.0f}, {y:.0f}, {z:.0f}) mm", fontsize=8)
        label = f"true {names[true_class]}"
        if outcome.binary:
            label = "false positives" if true_class == 0 else "false negatives"
        axes[row, 0].text(-0.08, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=10)
    fig.suptitle(_title(outcome, "most confident mistakes (slice through the candidate, circled)"), fontsize=10)
    return fig


def froc_evaluation_figure(outcome: EvaluationOutcome, image_name: ImageName | None = None) -> Figure | None:
    """The FROC of this evaluation, when its data defines evaluated scans."""
    if outcome.froc is None:
        return None
    return froc_figure(outcome.froc, _title(outcome, f"FROC over {outcome.froc.counts.scans} scans"))


def froc_figure(result: FrocResult, title: str = "FROC") -> Figure:
    """The FROC curve on a log2 FP/scan axis (1/8 to 8), its seven operating points and CPM, and
    the bootstrap band when the result has one."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    band = result.bootstrap
    if band is not None:
        ax.fill_between(band.fp_per_scan, band.sensitivity_low, band.sensitivity_high, color="C0", alpha=0.2,
                        label=f"95 % bootstrap band ({band.samples} resamples over scans)")
    inside = result.curve_fp_per_scan > 0
    ax.plot(result.curve_fp_per_scan[inside], result.curve_sensitivity[inside], color="C0", lw=1.5, label="FROC")
    interval = f" (95 % CI {band.cpm_ci[0]:.3f}-{band.cpm_ci[1]:.3f})" if band else ""
    ax.plot(result.fp_per_scan, result.sensitivity, "o", color="C3", label=f"CPM {result.cpm:.3f}{interval}")
    for x, y in zip(result.fp_per_scan, result.sensitivity):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.fp_per_scan, OPERATING_POINTS)
    ax.set(xlim=(result.fp_per_scan[0] / 1.2, result.fp_per_scan[-1] * 1.2), ylim=(0, 1.05),
           xlabel="average false positives per scan", ylabel="sensitivity", title=title)
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(loc="lower right", fontsize=8)
    counts = result.counts
    ax.text(0.02, 0.98, f"{counts.scans} scans, {counts.detected}/{counts.nodules} nodules detected, "
            f"{counts.false_positives} false positives", transform=ax.transAxes, va="top", fontsize=8)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB ``uint8`` pixels of a figure, rendered with Agg (no pyplot, no display)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
