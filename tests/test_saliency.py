"""Where the model looks: occlusion maps (``luna.models.saliency``) peak where the evidence is, and
``--evaluation.saliency=true`` overlays them on the mistakes montage and on the mistakes of the W&B
candidate table."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from luna.models.saliency import occlusion_map
from tests.helpers import points_config

BOX = (slice(8, 12), slice(16, 20), slice(4, 8))  # I, R, C


class BoxEvidence(nn.Module):
    """P(class 1) rises with the mean value inside one box of the crop: the only evidence there is."""

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        evidence = crops[:, 0, BOX[0], BOX[1], BOX[2]].mean(dim=(1, 2, 3)) / 1000
        return torch.softmax(torch.stack([-evidence, evidence], dim=1), dim=1)


def test_an_occlusion_map_peaks_where_the_evidence_is_and_is_zero_far_from_it():
    crop = torch.full((1, 1, 16, 24, 24), 500.0)
    saliency = occlusion_map(BoxEvidence(), [crop], 1, fill=-1000.0)
    assert saliency.shape == (16, 24, 24)
    assert saliency[BOX].max() == saliency.max()  # the peak (a plateau, blocks are 4x8x8) is on the box
    weight, voxels = np.clip(saliency, 0, None), np.indices(saliency.shape)
    centroid = np.array([(weight * voxels[axis]).sum() / weight.sum() for axis in range(3)])
    assert np.abs(centroid - np.array([9.5, 17.5, 5.5])).max() <= 1.5  # centred on the box
    assert saliency[BOX].min() > 0 and np.abs(saliency[:4, :8, 14:]).max() == 0  # no drop far away
    # the other class's map is the mirror image: what is evidence for one is against the other
    assert np.allclose(occlusion_map(BoxEvidence(), [crop], 0, fill=-1000.0), -saliency, atol=1e-6)


@pytest.fixture(scope="module")
def points_run(points_dir, tmp_path_factory):
    """A three-class model trained a few steps on the points phantom: config and checkpoint."""
    from luna.cli.fit import main

    folder = tmp_path_factory.mktemp("saliency")
    config = points_config(
        folder / "points.yaml", points_dir / "points.csv", folder / "cache", folder / "runs"
    )
    main(["--config", str(config)])
    return config, folder / "runs" / "version_0" / "checkpoints" / "last.ckpt"


def validate(config, checkpoint, root, *more):
    from luna.cli.fit import main

    return main(
        [
            "validate",
            "--config",
            str(config),
            f"--ckpt_path={checkpoint}",
            f"--trainer.default_root_dir={root}",
            "--evaluation.mistakes_shown=2",
            *more,
        ]
    )


def test_validate_with_saliency_overlays_the_mistakes_montage(points_run, tmp_path):
    import shutil

    from luna.metrics.figures import mistakes_figure
    from luna.metrics.stage import evaluation_of
    from luna.training.saliency import SALIENCY_PLANES, with_saliency

    config, trained = points_run
    checkpoint = shutil.copy(trained, tmp_path / "model.ckpt")  # outside its run: validate writes to root
    plain = validate(config, checkpoint, tmp_path / "plain")
    shown = validate(config, checkpoint, tmp_path / "saliency", "--evaluation.saliency=true")
    montages = [
        next((tmp_path / name).rglob("val_confident_mistakes-*.png")).read_bytes()
        for name in ("plain", "saliency")
    ]
    assert montages[0] != montages[1]

    outcome = evaluation_of(shown.model, "val")
    mistakes = with_saliency(outcome.mistakes, shown.model, shown.datamodule)
    assert sum(len(kept["score"]) for kept in mistakes) > 0  # a few steps of training: mistakes there are
    for kept in mistakes:
        for plane, name in zip(("axial", "coronal", "sagittal"), SALIENCY_PLANES, strict=True):
            assert kept[name].shape == kept[plane].shape and np.isfinite(kept[name]).all()
    plain_figure = mistakes_figure(evaluation_of(plain.model, "val"))
    assert {len(ax.images) for ax in plain_figure.axes} == {1}  # the slice alone
    overlaid = mistakes_figure(replace(outcome, mistakes=mistakes))
    assert {len(ax.images) for ax in overlaid.axes} == {2}  # the slice and its saliency
    assert "occlusion sensitivity" in overlaid.get_suptitle()


def test_the_wandb_table_gets_a_saliency_image_for_each_mistake_and_none_for_the_others(points_run, tmp_path):
    from luna.callbacks.candidate_table import CandidateTable, _Row

    config, checkpoint = points_run
    cli = validate(config, checkpoint, tmp_path, "--evaluation.saliency=true")
    data = cli.datamodule
    positions = data.val_dataset.positions[:3]
    width = data.input_widths_irc[0]
    blank = tuple(
        np.zeros(shape, np.uint8)
        for shape in ((width[1], width[2]), (width[0], width[2]), (width[0], width[1]))
    )
    labels = data.cache.labels[positions]
    rows = [
        _Row(int(positions[0]), int(labels[0]), int(labels[0]), 0.9, blank, (2, 3, 4)),  # right
        _Row(int(positions[1]), int(labels[1]), (int(labels[1]) + 1) % 3, 0.8, blank, (5, 6, 7)),  # wrong
    ]
    overlays = CandidateTable._saliency(cli.model, data, rows)
    assert overlays[0] is None
    assert overlays[1].dtype == np.uint8 and overlays[1].shape == (width[1], width[2], 3)
