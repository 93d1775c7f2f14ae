"""Fine-tuning and the learning-rate finder, in real Trainer runs on the phantom data."""

import csv
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from luna.cli.fit import main
from luna.luna16.datamodule import LunaDataModule
from luna.training.finetuning import ProgressiveUnfreezing
from luna.training.module import LunaClassifier
from tests.helpers import tiny_config
from tests.oracles import book_augmentation


def test_progressive_unfreezing_keeps_frozen_weights_and_adds_slower_groups(
    phantom_dir, cache_root, tmp_path
):
    datamodule = LunaDataModule(
        phantom_dir,
        cache_dir=cache_root,
        batch_size=8,
        num_workers=0,
        negatives_per_positive=1,
        samples_per_epoch=16,
    )
    module = LunaClassifier()
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append({k: v.detach().clone() for k, v in pl_module.network.named_parameters()})

    unfreezing = ProgressiveUnfreezing(trainable_at_start=1, epochs_per_unit=1, lr_decay_per_unit=0.5)
    start = {k: v.detach().clone() for k, v in module.network.named_parameters()}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[unfreezing, Snapshot()],
    )
    trainer.fit(module, datamodule=datamodule)
    changed_first = {k.split(".")[0] for k in start if not torch.equal(start[k], snapshots[0][k])}
    changed_second = {k.split(".")[0] for k in start if not torch.equal(snapshots[0][k], snapshots[1][k])}
    assert changed_first == {"head_linear"}  # epoch 0: head only
    assert changed_second == {"head_linear", "block4"}  # epoch 1: block4 unfrozen too
    rates = [group["lr"] for group in trainer.optimizers[0].param_groups]
    assert rates == [1e-3, 1e-3 * 0.5]


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_lr_finder_suggests_a_rate_that_trains(phantom_dir, cache_root, tmp_path, capsys):
    config = tiny_config(
        tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs", samples_per_epoch=480
    )
    main(
        [
            "--config",
            str(config),
            "--config",
            "configs/presets/lr_find.yaml",
            "--trainer.callbacks.init_args.num_training_steps=50",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert "Finding best initial lr" not in capsys.readouterr().err  # no bar in the run: none for the sweep
    run = tmp_path / "runs" / "version_0"
    report = json.loads((run / "lr_finder.json").read_text())
    assert len(report["lr"]) == len(report["loss"]) >= 30 and report["rule"].startswith(
        "the steepest descent"
    )  # it may stop on divergence
    suggestion = report["suggestion"]
    # near 1e-3, the rate the default configuration trains with; a 50-step sweep's suggestion moves
    # with the thread count (float sums: 1.2e-2 with one thread, 1e-3 with two), hence the 30x band
    assert 3e-5 <= suggestion <= 3e-2
    assert (run / "lr_finder.png").stat().st_size > 1000
    assert not (run / "checkpoints" / "last.ckpt").exists()  # stopped after the sweep
    # and a short training at the suggested rate does learn: its loss falls
    cli = main(
        [
            "--config",
            str(config),
            f"--model.optimizer.init_args.lr={suggestion}",
            "--trainer.max_epochs=3",
            "--data.samples_per_epoch=96",
            f"--trainer.default_root_dir={tmp_path / 'train'}",
        ]
    )
    losses = [
        float(row["train/loss"])
        for row in csv.DictReader((tmp_path / "train" / "version_0" / "metrics.csv").open())
        if row.get("train/loss")
    ]
    assert len(losses) == 3 and losses[-1] < losses[0] and cli.trainer.global_step == 36


def test_presized_context_trains_augmented_and_validates_on_the_exact_crop(phantom_dir, tmp_path):

    datamodule = LunaDataModule(
        phantom_dir,
        cache_dir=tmp_path / "cache",
        batch_size=4,
        num_workers=0,
        context_irc=(48, 64, 64),
        negatives_per_positive=1,
        samples_per_epoch=8,
    )
    shapes = {}

    class Shapes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            shapes["train"] = tuple(batch["crop"].shape)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            shapes["val"] = tuple(batch["crop"].shape)

    module = LunaClassifier(augmentation=book_augmentation())
    pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Shapes()],
    ).fit(module, datamodule=datamodule)
    assert shapes == {"train": (4, 1, 32, 48, 48), "val": (4, 1, 32, 48, 48)}
    assert tuple(next(iter(datamodule.train_dataloader()))["crop"].shape) == (4, 1, 48, 64, 64)  # the context
    assert tuple(next(iter(datamodule.val_dataloader()))["crop"].shape) == (
        4,
        1,
        32,
        48,
        48,
    )  # cut on the CPU


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
def test_schedules_step_per_batch_with_their_own_shape(schedule):
    module = LunaClassifier(lr_schedule=schedule)
    module.trainer = type("Stub", (), {"estimated_stepping_batches": 50})()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    rates = []
    for _ in range(50):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(rates))
    assert rates[peak] == pytest.approx(1e-3, rel=1e-6) and rates[-1] < 0.05 * 1e-3
    if schedule == "one_cycle":  # warms up from peak/25 to the peak at 30 % of the steps, then anneals
        assert rates[0] == pytest.approx(1e-3 / 25, rel=1e-6) and 13 <= peak <= 16
    else:  # starts at the peak and decays as a half cosine: half the peak at half the steps
        assert peak == 0 and rates[25] == pytest.approx(0.5e-3, rel=1e-6)


def test_early_stopping_preset_monitors_val_f1(capsys):
    import yaml

    with pytest.raises(SystemExit):
        main(["--config", "configs/presets/early_stopping.yaml", "--print_config"])
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    stopping = [c for c in callbacks if c["class_path"].endswith("EarlyStopping")][0]
    assert stopping["init_args"]["monitor"] == "val/f1" and stopping["init_args"]["mode"] == "max"


def test_the_learning_rate_suggestion_is_the_steepest_descent_past_an_initial_rise():
    from luna.callbacks.lr_finder import lr_finder_figure, suggest_learning_rate

    lrs = np.logspace(-6, 0, 100)
    x = np.log10(lrs)
    falling = 2.0 - 1.5 / (1 + np.exp(-(x + 3) / 0.3))  # falls fastest at 1e-3, bottoms out near 1e-1
    losses = np.where(x < -1, falling, falling + 50 * (x + 1) ** 2)  # diverges beyond 0.1
    noisy = losses + np.random.default_rng(0).normal(0, 0.01, len(losses))
    suggestion = suggest_learning_rate(lrs, noisy)
    assert 1e-3 / 1.5 < suggestion < 1e-3 * 1.5
    hump = noisy + 3 * np.exp(
        -(((x + 5.3) / 0.4) ** 2)
    )  # a first rise, as the book's head gives: never chosen
    assert 1e-3 / 1.5 < suggest_learning_rate(lrs, hump) < 1e-3 * 1.5
    flat_start = np.where(x < -4, 2.0 + 1e-4 * (x + 6), noisy)  # a flat start that wiggles down by nothing
    assert 1e-3 / 1.5 < suggest_learning_rate(lrs, flat_start) < 1e-3 * 1.5
    assert suggest_learning_rate(lrs, 1 + x - x.min()) is None  # a loss that only rises: no suggestion
    fig = lr_finder_figure(lrs, noisy, suggestion)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title().startswith("learning-rate finder: 100 steps")
    assert ax.get_ylim()[1] < 10  # the diverged end (up to 50) is clipped away
