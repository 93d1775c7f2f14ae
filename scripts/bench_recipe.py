"""Training-recipe benchmark: what balancing, augmentation, TTA, mixup, label smoothing and
fine-tuning do to validation F1, AUROC and calibration, at the same step budget, on held-out series.

    python scripts/bench_recipe.py [--steps 100] [--batch_size 16] [--series 40]

All runs train LunaModel with AdamW (lr 1e-3) from the same seed on the same phantom folder and
are validated on series they never saw (every 5th series). The second part times augmentation of
a batch of crops with the book's settings: batched on the device (luna) against the book's path,
one ``affine_grid`` + ``grid_sample`` per crop on the CPU, as its DataLoader workers do it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from luna.luna16.datamodule import LunaDataModule
from luna.luna16.phantom import PhantomSpec
from luna.training.evaluation import EvaluationChoices
from luna.training.module import LunaClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the book's reference path lives with the tests
from tests.oracles import augment, book_affine, book_augmentation  # noqa: E402


@dataclass
class Recipe:
    name: str
    negatives_per_positive: int = 0
    module: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # how the run is evaluated (luna.training.evaluation)
    init_from: str | None = None  # name of an earlier recipe whose final weights start this one
    tta_of: str | None = None  # evaluate an earlier recipe's weights with TTA instead of training


BOOK = book_augmentation()
RECIPES = [
    Recipe("plain (natural ratio)"),
    Recipe("balanced 1:1", negatives_per_positive=1),
    Recipe("balanced + augmented", negatives_per_positive=1, module={"augmentation": BOOK}),
    Recipe("+ TTA (4 flips)", tta_of="balanced + augmented", evaluation={"tta_flips": [[], [0], [1], [2]]}),
    Recipe("+ mixup 0.4", negatives_per_positive=1, module={"augmentation": BOOK, "mixup_alpha": 0.4}),
    Recipe(
        "+ label smoothing 0.1",
        negatives_per_positive=1,
        module={"augmentation": BOOK, "label_smoothing": 0.1},
    ),
    Recipe(
        "fine-tuned from plain (discriminative lr)",
        negatives_per_positive=1,
        module={"augmentation": BOOK, "lr_decay_per_unit": 0.5},
        init_from="plain (natural ratio)",
    ),
]


def optimizer(params):
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


def run_recipes(args: argparse.Namespace) -> None:
    work = args.workdir
    checkpoints: dict[str, Path] = {}
    rows = []
    for recipe in RECIPES:
        pl.seed_everything(0, verbose=False)
        datamodule = LunaDataModule(
            None,
            cache_dir=work / "cache",
            val_stride=5,
            batch_size=args.batch_size,
            num_workers=2,
            negatives_per_positive=recipe.negatives_per_positive,
            samples_per_epoch=args.steps * args.batch_size,
            phantom=PhantomSpec(series=args.series, seed=3),
        )
        init = checkpoints.get(recipe.init_from or recipe.tta_of or "")
        module = LunaClassifier(
            optimizer=optimizer, init_checkpoint=str(init) if init else None, **recipe.module
        )
        quiet = {
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "accelerator": "auto",
            "devices": 1,
        }
        trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, **quiet)
        start = time.perf_counter()
        if recipe.tta_of is None:
            trainer.fit(module, datamodule=datamodule)
            checkpoints[recipe.name] = work / f"recipe{len(checkpoints)}.ckpt"
            trainer.save_checkpoint(checkpoints[recipe.name])
        seconds = time.perf_counter() - start
        module.configure_evaluation(EvaluationChoices(**recipe.evaluation))
        metrics = pl.Trainer(**quiet).validate(module, datamodule=datamodule, verbose=False)[0]
        rows.append(
            (
                recipe.name,
                metrics["val/f1"],
                metrics["val/auroc"],
                metrics["val/cpm"],
                metrics["val/calibration_error"],
                metrics["val/samples"],
                seconds,
            )
        )
        logging.getLogger("bench").info("%s: F1 %.3f", recipe.name, metrics["val/f1"])
    print(f"\nValidation on held-out series, {args.steps} steps of {args.batch_size} per training run:\n")
    print(
        "| recipe | val F1 (at 0.5) | val AUROC | val CPM | calibration error (ECE) | validation samples | "
        "training s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, f1, auroc, cpm, ece, samples, seconds in rows:
        print(f"| {name} | {f1:.3f} | {auroc:.3f} | {cpm:.3f} | {ece:.3f} | {int(samples)} | {seconds:.0f} |")


def book_per_sample(crops: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """The book's path: one affine_grid + grid_sample per crop (as in its Dataset's __getitem__)."""
    out = []
    for crop, theta in zip(crops, transforms, strict=False):
        grid = F.affine_grid(theta[None], [1, *crop.shape], align_corners=False)
        sample = F.grid_sample(crop[None], grid, padding_mode="border", align_corners=False)[0]
        out.append(sample + torch.randn_like(sample) * BOOK.noise_hu)
    return torch.stack(out)


def time_augmentation(batch_size: int, repeats: int) -> None:
    crops = torch.randn(batch_size, 1, 32, 48, 48) * 300
    windows = torch.zeros(batch_size, 3, dtype=torch.long)  # the crops are the model's crops

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return batch_size / min(times)

    transforms = book_affine(BOOK, torch.rand(batch_size, 3) < 0.5)
    per_sample = best(lambda: book_per_sample(crops, transforms))
    batched_cpu = best(lambda: augment(crops, windows, (32, 48, 48), BOOK))
    print(f"\nAugmentation, book settings, batches of {batch_size} crops of 32x48x48:")
    print(f"- per-sample CPU path (book): {per_sample:,.0f} crops/s")
    print(f"- batched on the CPU (luna): {batched_cpu:,.0f} crops/s ({batched_cpu / per_sample:.1f}x)")
    if torch.cuda.is_available():
        on_device, device_windows = crops.cuda(), windows.cuda()
        batched_gpu = best(lambda: augment(on_device, device_windows, (32, 48, 48), BOOK))
        print(
            f"- batched on {torch.cuda.get_device_name()} (luna): {batched_gpu:,.0f} crops/s "
            f"({batched_gpu / per_sample:.1f}x the per-sample CPU path)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--series", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "luna-bench-recipe")
    parser.add_argument("--skip_training", action="store_true", help="only time the augmentation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    time_augmentation(batch_size=32, repeats=5)
    if not args.skip_training:
        run_recipes(args)


if __name__ == "__main__":
    main()
