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
    metrics = StageMetrics(
        "val", class_names=["non-nodule", "nodule"], curves=True, crop_shape=(4, 8, 8), mistakes=3
    )
    identity = {
        "index": torch.arange(40),
        "image": torch.zeros(40, dtype=torch.long),
        "center_xyz": torch.tensor(rng.uniform(-100, 100, (40, 3))),
        "voxel_mm": torch.tensor([[2.5, 0.7, 0.7]] * 40, dtype=torch.float64),
    }
    metrics.update(
        torch.stack([1 - p, p], 1),
        labels,
        torch.zeros(40),
        identity,
        torch.zeros(40, 4, 8, 8),
        torch.tensor([[2, 4, 4]] * 40),
    )
    result = metrics.compute(epoch=epoch)
    findings = Findings(np.zeros(2, dtype=np.int64), np.zeros((2, 3)), np.array([10.0, 10.0]))
    result.froc = froc(
        Marks(np.zeros(3, dtype=np.int64), np.zeros((3, 3)), np.array([0.9, 0.5, 0.1])),
        Reference(["a"], findings, Findings.empty()),
    )
    return result


def title(fig):
    return fig.axes[0].get_title() + fig.get_suptitle()


def test_every_figure_is_titled_with_stage_and_epoch():
    result = outcome(epoch=7)
    for name, (kind, build) in FIGURES.items():
        if not isinstance(result, kind):
            continue
        fig = build(result, lambda image: "…123456")
        assert fig is not None, name
        assert "val" in title(fig) and "epoch 7" in title(fig), (name, title(fig))


def test_pr_curve_shows_average_precision_and_the_operating_point():
    fig = FIGURES["pr_curve"][1](outcome(), None)
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert f"PR curve (AP {outcome().scalars['val/average_precision']:.3f})" in legend  # torchmetrics' value
    assert any(text.startswith("threshold 0.5: F1 ") for text in legend)
    assert any("best F1" in text and "optimistic" in text for text in legend)


def test_reliability_shows_intervals_that_widen_for_small_bins_and_the_counts_below():
    from luna.metrics.figures import wilson_interval

    result = outcome()
    fig = FIGURES["reliability"][1](result, None)
    ax, counts_ax = fig.axes
    assert "ECE" in ax.get_title()
    assert sum(bar.get_height() for bar in counts_ax.patches) == 40  # every sample in one bin
    fig.canvas.draw()  # the legend sits upper left, off the diagonal's upper right end
    legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x1 < box.x0 + 0.75 * box.width and legend.y0 > box.y0 + 0.5 * box.height
    low, high = wilson_interval(np.array([2.0, 200.0]), np.array([4.0, 400.0]))
    assert (high - low)[0] > 4 * (high - low)[1]  # 2/4 is far less certain than 200/400
    assert 0 <= low[0] < 0.5 < high[0] <= 1
    low, high = wilson_interval(
        np.array([0.0]), np.array([5.0])
    )  # none of 5: still an interval, inside [0, 1]
    assert low[0] == 0 and 0.3 < high[0] < 0.6
    count = np.arange(1.0, 400.0)  # all-or-none bins: rounding once put a bound a hair past the rate (6 of 6)
    for successes in (0 * count, count):
        low, high = wilson_interval(successes, count)
        assert np.all(low <= successes / count) and np.all(successes / count <= high)


def test_mistakes_show_three_planes_at_their_voxel_aspect_with_captions_and_the_window():
    fig = FIGURES["confident_mistakes"][1](outcome(), lambda image: "…123456")
    panels = [panel for panel in fig.subfigs if panel.axes]
    captions = [panel.get_suptitle() for panel in panels]
    assert len(captions) == 6  # three mistakes of each class
    assert all(c.startswith("P(nodule) = ") and "…123456" in c and " mm" in c for c in captions)
    assert all([ax.get_xlabel() for ax in panel.axes] == ["axial", "coronal", "sagittal"] for panel in panels)
    assert [ax.get_aspect() for ax in panels[0].axes] == [1.0, 2.5 / 0.7, 2.5 / 0.7]
    assert all(len(ax.lines) == 1 for ax in fig.get_axes())  # the candidate is marked in every slice
    assert "-1000 to 400 HU" in fig.get_suptitle()


def test_froc_figure_has_a_log_axis_the_seven_points_and_its_legend_below():
    result = outcome().froc
    fig = froc_figure(result, "FROC test")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title().startswith("FROC test\n1 scan, 2 nodules: ")
    assert "detected at the lowest threshold" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1/8", "1/4", "1/2", "1", "2", "4", "8"]
    fig.canvas.draw()  # the legend lies wholly below the axes, off the curve
    assert fig.axes[0].get_legend().get_window_extent().y1 < ax.get_window_extent().y0


def test_importing_luna_leaves_the_matplotlib_backend_alone():
    code = (
        "import matplotlib; import luna.fit, luna.evaluation.figures, luna.callbacks.figures, luna.evaluate; "
        "print(matplotlib.get_backend())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MPLBACKEND": "svg"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "svg"


def test_crops_are_drawn_in_the_datas_own_window():
    from dataclasses import replace

    from luna.metrics.figures import LUNG_WINDOW_HU, display_window

    assert display_window([-1000, 1000, 1]) == LUNG_WINDOW_HU and display_window(None) == LUNG_WINDOW_HU
    assert display_window([0, 4000, 8]) == (0, 32000)  # MRI stored at 8 per unit: the whole range, not HU
    for window in (LUNG_WINDOW_HU, (0.0, 32000.0)):
        fig = FIGURES["confident_mistakes"][1](replace(outcome(), display_window=window), None)
        images = [image for ax in fig.axes for image in ax.get_images()]
        assert images and all(image.get_clim() == window for image in images)
        assert (" HU" in fig.get_suptitle()) == (window == LUNG_WINDOW_HU)
