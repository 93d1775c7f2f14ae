"""Drawing and saving figures: LUNA16's FROC curve, and figures as pixels or PNG files. Pure
matplotlib on numpy (``matplotlib.figure.Figure``, never ``pyplot``): importing luna leaves the
caller's matplotlib backend alone, and figures render headless.

The figures of a validation or test (PR curve, confusion matrix, reliability, mistakes) are in
``luna.metrics.figures``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from luna.io.files import write_atomic

if TYPE_CHECKING:
    from luna.evaluation.froc import FrocResult

OPERATING_POINTS = ("1/8", "1/4", "1/2", "1", "2", "4", "8")


def froc_figure(result: FrocResult, title: str = "FROC") -> Figure:
    """The FROC curve on a log2 FP/scan axis (1/8 to 8), its seven operating points and CPM, and
    the bootstrap band when the result has one."""
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    band = result.bootstrap
    if band is not None:
        ax.fill_between(
            band.fp_per_scan,
            band.sensitivity_low,
            band.sensitivity_high,
            color="C0",
            alpha=0.2,
            label=f"95 % bootstrap band ({band.samples} resamples over scans)",
        )
    inside = result.curve_fp_per_scan > 0
    ax.plot(
        result.curve_fp_per_scan[inside], result.curve_sensitivity[inside], color="C0", lw=1.5, label="FROC"
    )
    interval = f" (95 % CI {band.cpm_ci[0]:.3f}-{band.cpm_ci[1]:.3f})" if band else ""
    ax.plot(result.fp_per_scan, result.sensitivity, "o", color="C3", label=f"CPM {result.cpm:.3f}{interval}")
    for x, y in zip(result.fp_per_scan, result.sensitivity, strict=True):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.fp_per_scan, OPERATING_POINTS)
    ax.set(
        xlim=(result.fp_per_scan[0] / 1.2, result.fp_per_scan[-1] * 1.2),
        ylim=(0, 1.05),
        xlabel="average false positives per scan",
        ylabel="sensitivity",
    )
    ax.grid(True, which="major", alpha=0.4)
    counts = result.counts
    scans = f"{counts.scans} scan" + ("s" if counts.scans != 1 else "")
    ax.set_title(
        f"{title}\n{scans}, {counts.nodules} nodules: {counts.detected} detected at the lowest "
        f"threshold, with {counts.false_positives} false positives",
        fontsize=10,
    )
    # below the axes: a legend inside would cover the operating points when sensitivity is low
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8, frameon=False)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB ``uint8`` pixels of a figure, rendered with Agg (no pyplot, no display)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(fig: Figure, path: str | Path, dpi: int = 100, **savefig: Any) -> Path:
    """Write a figure as a PNG, atomically (a reader never finds half a file); ``savefig`` options
    such as ``bbox_inches`` go to matplotlib."""
    path = Path(path)
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi, **savefig))
    return path
