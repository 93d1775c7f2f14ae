"""Figures read back from the figure objects: titles with stage and epoch, labels, what is drawn."""

import os
import subprocess
import sys

import numpy as np
import torch

from luna.callbacks.figures import FIGURES
from luna.evaluation.figures import froc_figure
from luna.evaluation.froc import Findings, Marks, Reference, froc
from luna.metrics.stage import StageMetrics


def outcome(epoch=7):
    rng = np.random.default_rng(0)
    labels = torch.tensor([1] * 10 + [0] * 30)
    p = torch.tensor(labels.numpy() * 0.3 + rng.random(40) * 0.7, dtype=torch.float32)  # overlapping classes
    metrics = StageMetrics("val", class_names=["non-nodule", "nodule"], curves=True, slice_shape=(8, 8), mistakes=3)
    identity = {"index": torch.arange(40), "image": torch.zeros(40, dtype=torch.long),
                "center_xyz": torch.tensor(rng.uniform(-100, 100, (40, 3)))}
    metrics.update(torch.stack([1 - p, p], 1), labels, torch.zeros(40), identity, torch.zeros(40, 8, 8),
                   torch.full((40, 2), 4))
    result = metrics.compute(epoch=epoch)
    findings = Findings(np.zeros(2, dtype=np.int64), np.zeros((2, 3)), np.array([10.0, 10.0]))
    result.froc = froc(Marks(np.zeros(3, dtype=np.int64), np.zeros((3, 3)), np.array([0.9, 0.5, 0.1])),
                       Reference(["a"], findings, Findings.empty()))
    return result


def title(fig):
    return fig.axes[0].get_title() + fig.get_suptitle()


def test_every_figure_is_titled_with_stage_and_epoch():
    result = outcome(epoch=7)
    for name, build in FIGURES.items():
        fig = build(result, lambda image: "…123456")
        assert fig is not None, name
        assert "val" in title(fig) and "epoch 7" in title(fig), (name, title(fig))


def test_pr_curve_shows_average_precision_and_the_operating_point():
    fig = FIGURES["pr_curve"](outcome(), None)
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert any(text.startswith("PR curve (AP ") for text in legend)
    assert any(text.startswith("threshold 0.5: F1 ") for text in legend)
    assert any("best F1" in text and "optimistic" in text for text in legend)


def test_reliability_draws_only_filled_bins_with_counts_and_the_ece():
    result = outcome()
    fig = FIGURES["reliability"](result, None)
    ax = fig.axes[0]
    assert "ECE" in ax.get_title()
    filled = int((result.reliability["count"] > 0).sum())
    assert len(ax.patches) == filled
    counts = [t.get_text() for t in ax.texts if t.get_text().startswith("n=")]
    assert sum(int(t[2:]) for t in counts) == 40
    assert ax.get_legend()._loc == 2  # upper left, off the diagonal's upper right end


def test_mistake_captions_give_the_probability_series_and_coordinates():
    fig = FIGURES["confident_mistakes"](outcome(), lambda image: "…123456")
    captions = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert captions and all(c.startswith("P(nodule) = ") and "…123456" in c and " mm" in c for c in captions)
    assert all(len(ax.lines) == 1 for ax in fig.axes if ax.get_title())  # the candidate is circled


def test_froc_figure_has_a_log_axis_and_the_seven_points():
    result = outcome().froc
    fig = froc_figure(result, "FROC test")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "FROC test"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1/8", "1/4", "1/2", "1", "2", "4", "8"]


def test_importing_luna_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; import luna.fit, luna.evaluation.figures, luna.callbacks.figures, luna.evaluate; "
            "print(matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MPLBACKEND": "svg"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "svg"
