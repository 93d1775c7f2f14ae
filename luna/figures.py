"""Validation figures (PR curve, confusion matrix, reliability diagram, confident mistakes) and
sending them to whichever loggers are active: TensorBoard and W&B get images, CSV-only runs get
PNG files beside their metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pytorch_lightning import Trainer  # noqa: E402
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger  # noqa: E402
from torchmetrics.classification import BinaryConfusionMatrix, BinaryPrecisionRecallCurve  # noqa: E402

log = logging.getLogger(__name__)


def pr_curve_figure(curve: tuple[torch.Tensor, ...]) -> Figure:
    """Precision against recall from ``BinaryPrecisionRecallCurve.compute()``."""
    fig, _ = BinaryPrecisionRecallCurve().plot(curve=tuple(t.cpu() for t in curve), score=True)
    return fig


def confusion_figure(matrix: torch.Tensor) -> Figure:
    """The 2x2 confusion matrix (rows: true class, columns: predicted)."""
    fig, ax = BinaryConfusionMatrix().plot(val=matrix.cpu(), labels=["non-nodule", "nodule"])
    ax.set_title("confusion matrix (threshold 0.5)")
    return fig


def reliability_figure(bins: dict[str, torch.Tensor]) -> Figure:
    """Observed positive rate against mean predicted probability, per probability bin."""
    count = bins["count"].cpu().numpy()
    edges = np.linspace(0, 1, len(count) + 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    filled = count > 0
    ax.bar(edges[:-1][filled], bins["positive_rate"].cpu().numpy()[filled], width=np.diff(edges)[filled],
           align="edge", alpha=0.6, edgecolor="k", label="observed nodule rate")
    ax.plot(bins["confidence"].cpu().numpy()[filled], bins["positive_rate"].cpu().numpy()[filled], "o-", label="bin means")
    ax.set(xlabel="predicted probability of nodule", ylabel="fraction that are nodules", xlim=(0, 1), ylim=(0, 1),
           title="reliability")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def mistakes_figure(mistakes: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    describe=lambda index: str(index)) -> Figure:
    """Centre slices of the most confident false positives (top row) and false negatives (bottom)."""
    columns = max(1, max(len(score) for score, _, _ in mistakes.values()))
    fig, axes = plt.subplots(2, columns, figsize=(1.9 * columns, 4.4), squeeze=False)
    for row, (kind, (score, index, slices)) in enumerate(mistakes.items()):
        for column in range(columns):
            ax = axes[row, column]
            ax.axis("off")
            if column < len(score):
                ax.imshow(slices[column].cpu().numpy(), cmap="gray", vmin=-1000, vmax=400)
                ax.set_title(f"{describe(int(index[column]))}\n{float(score[column]):.2f} sure", fontsize=6)
        axes[row, 0].text(-0.15, 0.5, kind.replace("_", " "), transform=axes[row, 0].transAxes,
                          rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle("most confident mistakes (centre slices)", fontsize=9)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB ``uint8`` pixels of a rendered figure."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def log_figures(trainer: Trainer, figures: dict[str, Figure]) -> None:
    """Send figures to every active logger (rank 0 only), then close them."""
    step = trainer.global_step
    for logger in trainer.loggers:
        for tag, fig in figures.items():
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, fig, global_step=step, close=False)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[figure_to_array(fig)], step=step)
            elif isinstance(logger, CSVLogger):
                folder = Path(logger.log_dir) / "figures"
                folder.mkdir(parents=True, exist_ok=True)
                fig.savefig(folder / f"{tag.replace('/', '_')}-epoch{trainer.current_epoch:03d}.png", dpi=90)
    for fig in figures.values():
        plt.close(fig)


def froc_figure(result, title: str = "FROC") -> Figure:
    """The FROC curve on a log2 FP/scan axis (1/8 to 8), its seven operating points and CPM, and
    the bootstrap band when the result has one."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    band = result.bootstrap
    if band is not None:
        ax.fill_between(band.fp_per_scan, band.sensitivity_low, band.sensitivity_high, color="C0", alpha=0.2,
                        label=f"95 % bootstrap band ({band.samples} resamples over scans)")
    inside = result.curve_fp_per_scan > 0
    ax.plot(result.curve_fp_per_scan[inside], result.curve_sensitivity[inside], color="C0", lw=1.5, drawstyle="default",
            label="FROC")
    ax.plot(result.fp_per_scan, result.sensitivity, "o", color="C3",
            label=f"CPM {result.cpm:.3f}" + (f" (95 % CI {band.cpm_ci[0]:.3f}-{band.cpm_ci[1]:.3f})" if band else ""))
    for x, y in zip(result.fp_per_scan, result.sensitivity):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.fp_per_scan, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set(xlim=(result.fp_per_scan[0] / 1.2, result.fp_per_scan[-1] * 1.2), ylim=(0, 1.05),
           xlabel="average false positives per scan", ylabel="sensitivity", title=title)
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(loc="lower right", fontsize=8)
    counts = result.counts
    ax.text(0.02, 0.98, f"{counts.scans} scans, {counts.detected}/{counts.nodules} nodules detected, "
            f"{counts.false_positives} false positives", transform=ax.transAxes, va="top", fontsize=8)
    return fig
