"""Fine-tuning and the learning-rate finder, in real Trainer runs on the phantom data."""

import json

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from luna.data.datamodule import LunaDataModule
from luna.finetuning import ProgressiveUnfreezing
from luna.fit import main
from luna.module import LunaClassifier
from tests.helpers import tiny_config


def test_progressive_unfreezing_keeps_frozen_weights_and_adds_slower_groups(phantom_dir, cache_root, tmp_path):
    datamodule = LunaDataModule(phantom_dir, cache_dir=cache_root, batch_size=8, num_workers=0,
                                negatives_per_positive=1, samples_per_epoch=16)
    module = LunaClassifier()
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append({k: v.detach().clone() for k, v in pl_module.network.named_parameters()})

    unfreezing = ProgressiveUnfreezing(trainable_at_start=1, epochs_per_unit=1, lr_decay_per_unit=0.5)
    start = {k: v.detach().clone() for k, v in module.network.named_parameters()}
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[unfreezing, Snapshot()])
    trainer.fit(module, datamodule=datamodule)
    changed_first = {k.split(".")[0] for k in start if not torch.equal(start[k], snapshots[0][k])}
    changed_second = {k.split(".")[0] for k in start if not torch.equal(snapshots[0][k], snapshots[1][k])}
    assert changed_first == {"head_linear"}  # epoch 0: head only
    assert changed_second == {"head_linear", "block4"}  # epoch 1: block4 unfrozen too
    rates = [group["lr"] for group in trainer.optimizers[0].param_groups]
    assert rates == [1e-3, 1e-3 * 0.5]


def test_lr_finder_runs_end_to_end_and_reports(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs", samples_per_epoch=160)
    main(["--config", str(config), "--config", "configs/presets/lr_find.yaml",
          "--trainer.callbacks.init_args.num_training_steps=15", "--trainer.enable_progress_bar=false"])
    run = tmp_path / "runs" / "luna" / "version_0"
    report = json.loads((run / "lr_finder.json").read_text())
    assert len(report["lr"]) == len(report["loss"]) > 5
    assert report["suggestion"] is None or 1e-6 <= report["suggestion"] <= 1.0
    assert (run / "lr_finder.png").stat().st_size > 1000
    assert not (run / "checkpoints" / "last.ckpt").exists()  # stopped after the sweep
