"""LunaClassifier in real Trainer runs on the phantom data."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from luna.callbacks.evaluation import EvaluationSettings
from luna.luna16.datamodule import LunaDataModule
from luna.training.module import LunaClassifier


@pytest.fixture
def datamodule(phantom_dir, cache_root):
    return LunaDataModule(
        phantom_dir,
        cache_dir=cache_root,
        batch_size=8,
        num_workers=0,
        negatives_per_positive=1,
        samples_per_epoch=16,
    )


def trainer(tmp_path, **kwargs):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        **kwargs,
    )


def test_sanity_check_does_not_leak_into_validation_metrics(datamodule, tmp_path):
    run = trainer(tmp_path, max_epochs=1, num_sanity_val_steps=2)
    run.fit(LunaClassifier(), datamodule=datamodule)
    assert run.callback_metrics["val/samples"] == len(datamodule.val_dataset)
    assert run.callback_metrics["train/samples"] == 16
    for name in (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "average_precision",
        "calibration_error",
        "loss",
        "loss_positive",
        "loss_negative",
    ):
        assert f"val/{name}" in run.callback_metrics


def test_predict_returns_plain_copies_of_images_centres_and_probabilities(datamodule, tmp_path):
    import numpy as np

    run = trainer(tmp_path)
    batches = run.predict(LunaClassifier(), datamodule=datamodule)
    dataset = datamodule.val_dataset
    assert np.concatenate([b["image"] for b in batches]).tolist() == dataset.images.tolist()
    centers = np.concatenate([b["center_xyz"] for b in batches])
    assert np.array_equal(centers, np.asarray(datamodule.cache.center_xyz[dataset.positions]))
    first = batches[0]
    assert all(isinstance(first[key], np.ndarray) for key in ("image", "center_xyz", "probabilities"))
    assert first["probabilities"].shape == (8, 2) and np.allclose(first["probabilities"].sum(1), 1)


def test_a_monai_network_replaces_luna_model(datamodule, tmp_path):
    from monai.networks.nets import DenseNet

    network = DenseNet(
        spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=8, block_config=(2, 2)
    )
    run = trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    run.fit(LunaClassifier(network=network), datamodule=datamodule)
    assert "val/auroc" in run.callback_metrics


def test_finetune_depth_trains_only_the_last_units(datamodule, tmp_path):
    module = LunaClassifier(finetune_depth=2)  # block4 + head, as the book's --finetune-depth=2
    before = {k: v.clone() for k, v in module.network.named_parameters()}
    trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, datamodule=datamodule)
    for name, value in module.network.named_parameters():
        changed = not torch.equal(before[name], value)
        assert changed == (name.split(".")[0] in ("block4", "head_linear")), name


def test_discriminative_learning_rates_scale_by_depth():
    module = LunaClassifier(lr_decay_per_unit=0.5)
    module.trainer = None
    optimizer = module.configure_optimizers()
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates == [1e-3 * 0.5**k for k in range(6)]  # head first, tail batchnorm last


def test_prior_correction_turns_balanced_odds_into_natural_odds(datamodule, tmp_path):
    corrected = LunaClassifier(channels_last=False)
    settings = EvaluationSettings(prior_correction=True)
    trainer(tmp_path, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[settings]).fit(
        corrected, datamodule=datamodule
    )
    natural, sampled = datamodule.class_frequencies()
    assert sampled.tolist() == [0.5, 0.5] and 0 < natural[1] < 0.5  # balanced epochs, rarer nodules
    plain = LunaClassifier(channels_last=False)
    plain.network.load_state_dict(corrected.network.state_dict())
    crops = torch.randn(6, 1, 32, 48, 48, generator=torch.Generator().manual_seed(0)) * 300
    corrected.eval(), plain.eval()
    logits = plain(crops).double()
    # odds of a nodule multiplied by natural[1] / natural[0]: add the log of that to the log-odds
    expected = torch.sigmoid(logits[:, 1] - logits[:, 0] + float(np.log(natural[1] / natural[0])))
    assert torch.allclose(corrected.probabilities(crops)[:, 1].double(), expected, atol=1e-6)
    assert torch.allclose(
        plain.probabilities(crops)[:, 1].double(), torch.sigmoid(logits[:, 1] - logits[:, 0]), atol=1e-6
    )
