"""Native voxel crops (the book) against physical-space crops and multi-scale views, at the same
training budget and seeds, on phantoms whose scans have LUNA16's spacings.

    python scripts/bench_physical.py [--series 120] [--steps 300] [--batch_size 16] [--seeds 0 1 2]

Part 1, LUNA16 candidates: a phantom with LUNA16's geometry (``PhantomSpec(geometry="luna16")``:
0.46-0.98 mm in-plane, 0.625-2.5 mm slices, nodules of 3.25-32 mm with a median near 6.4 mm,
pleural blobs as hard negatives). Every configuration trains LunaModel (or its multi-view form)
for ``--steps`` balanced batches with AdamW (lr 1e-3) from each seed and predicts the validation
scans (every 5th series, never seen in training). Reported: CPM per seed with its 95 % bootstrap
interval over the validation scans, the mean over seeds with its interval (the same resampled
scans for every run, so that means and differences pair up), the difference to the book's
crops with its interval, F1 at P >= 0.5, AUROC and the first training loss (training speed:
``scripts/bench_train.py``).
The book's head (Kaiming, fan_out) is compared with the zero-initialised one luna uses by
default on native crops; every other configuration uses luna's default networks.

Part 2, your own data: the points-CSV phantom with slice spacings mixed from 0.5 to 3 mm,
native 32x32x32 voxel cubes against 32x32x32 cubes of 1 mm: macro F1 and AUROC per seed, with
bootstrap intervals over the validation findings.

Each run's result is kept in ``--workdir``: a rerun skips the runs already done, so the script can
be stopped and resumed.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_f1_score,
    multiclass_auroc,
    multiclass_f1_score,
)

from luna.data.crops import View
from luna.evaluation.froc import Marks, cpm_resamples, froc
from luna.luna16.datamodule import LunaDataModule
from luna.luna16.phantom import PhantomSpec
from luna.models.luna_model import LunaModel
from luna.points.datamodule import PointsDataModule
from luna.points.phantom import PointsPhantomSpec
from luna.training.module import LunaClassifier

log = logging.getLogger("bench")
RESAMPLES = 1000
MONAI_SPACING = (1.25, 0.7, 0.7)  # MONAI's LUNA16 pipeline resamples to 0.703125 x 0.703125 x 1.25 mm


@dataclass
class Config:
    name: str
    data: dict = field(default_factory=dict)
    head_init: str | None = None  # a LunaModel with this head instead of the default network


CANDIDATE_CONFIGS = [
    Config("native 32x48x48 voxels, the book's head (Kaiming, fan_out)", head_init="kaiming"),
    Config("native 32x48x48 voxels (luna's default: zero-initialised head)"),
    Config("physical 32x48x48 at 1.25x0.7x0.7 mm", {"spacing_mm": MONAI_SPACING}),
    Config("physical 32x32x32 at 1 mm", {"width_irc": (32, 32, 32), "spacing_mm": (1.0, 1.0, 1.0)}),
    Config(
        "three views: 16x32x32 and 32x48x48 at 1.25x0.7x0.7 mm, 32x48x48 at 2.5x1.4x1.4 mm",
        {
            "width_irc": (16, 32, 32),
            "spacing_mm": MONAI_SPACING,
            "extra_views": [View((32, 48, 48), MONAI_SPACING), View((32, 48, 48), (2.5, 1.4, 1.4))],
        },
    ),
]
POINTS_CONFIGS = [
    Config("native 32x32x32 voxels", {"width_irc": (32, 32, 32)}),
    Config("physical 32x32x32 at 1 mm", {"width_irc": (32, 32, 32), "spacing_mm": (1.0, 1.0, 1.0)}),
]


class FirstLoss(pl.Callback):
    """The loss of the first training step (ln 2 = 0.693 is chance for two classes)."""

    def __init__(self) -> None:
        self.loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.loss is None:
            self.loss = float(outputs["loss"])


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


def train_and_predict(
    config: Config, datamodule: pl.LightningDataModule, seed: int, num_classes: int
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Train one run; its validation probabilities ``[n, classes]`` and cache indices ``[n]``."""
    pl.seed_everything(seed, verbose=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    network = None
    if config.head_init is not None:
        network = LunaModel(
            width_irc=datamodule.input_widths_irc[0], num_classes=num_classes, head_init=config.head_init
        )
    module = LunaClassifier(
        network=network,
        optimizer=adamw,
        input_widths_irc=datamodule.input_widths_irc,
        num_classes=num_classes,
    )
    first_loss = FirstLoss()
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "auto",
        "devices": 1,
    }
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, callbacks=[first_loss], **quiet)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    outputs = trainer.predict(module, dataloaders=datamodule.val_dataloader())
    indices = np.concatenate([batch["index"] for batch in outputs])
    probabilities = np.concatenate([batch["probabilities"] for batch in outputs])
    return {"train_seconds": seconds, "first_loss": first_loss.loss}, indices, probabilities


def candidate_run(config: Config, args: argparse.Namespace, seed: int) -> dict:
    datamodule = LunaDataModule(
        None,
        phantom=PhantomSpec(series=args.series, seed=11, geometry="luna16"),
        cache_dir=args.workdir / "cache",
        val_stride=5,
        batch_size=args.batch_size,
        num_workers=2,
        negatives_per_positive=1,
        samples_per_epoch=args.steps * args.batch_size,
        seed=seed,
        **config.data,
    )
    result, indices, probabilities = train_and_predict(config, datamodule, seed, 2)
    reference = datamodule.evaluation_reference("val")
    uids, centers = datamodule.identify(indices)
    scan_of = reference.scan_index()
    marks = Marks(np.array([scan_of[uid] for uid in uids]), centers, probabilities[:, 1].astype(np.float64))
    scored = froc(marks, reference, bootstrap_samples=RESAMPLES, seed=0)
    labels = torch.from_numpy(np.asarray(datamodule.cache.labels[indices], dtype=np.int64))
    scores = torch.from_numpy(probabilities[:, 1])
    result.update(
        cpm=scored.cpm,
        cpm_ci=list(scored.bootstrap.cpm_ci),
        resamples=cpm_resamples(marks, reference, RESAMPLES, seed=0).tolist(),
        f1=float(binary_f1_score(scores, labels)),
        auroc=float(binary_auroc(scores, labels)),
        scans=len(reference.scans),
        nodules=scored.counts.nodules,
        candidates=len(indices),
    )
    return result


def points_run(config: Config, args: argparse.Namespace, seed: int) -> dict:
    spec = PointsPhantomSpec(patients=args.patients, seed=5, in_plane_mm=(0.5, 1.0), slice_mm=(0.5, 3.0))
    datamodule = PointsDataModule(
        None,
        phantom=spec,
        cache_dir=args.workdir / "cache",
        val_stride=5,
        batch_size=args.batch_size,
        num_workers=2,
        negatives_per_positive=1,
        samples_per_epoch=args.points_steps * args.batch_size,
        seed=seed,
        **config.data,
    )
    result, indices, probabilities = train_and_predict(config, datamodule, seed, 3)
    labels = np.asarray(datamodule.cache.labels[indices], dtype=np.int64)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(labels), size=(RESAMPLES, len(labels)))  # the same draws for every run
    probs, target = torch.from_numpy(probabilities), torch.from_numpy(labels)
    f1s = [float(multiclass_f1_score(probs[row], target[row], 3, average="macro")) for row in draws]
    result.update(
        f1=float(multiclass_f1_score(probs, target, 3, average="macro")),
        auroc=float(multiclass_auroc(probs, target, 3, average="macro")),
        resamples=f1s,
        findings=len(labels),
    )
    return result


def cached(path: Path, run) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def interval(values: np.ndarray) -> str:
    values = np.sort(values[np.isfinite(values)])
    low, high = values[int(0.025 * len(values))], values[int(0.975 * len(values))]
    return f"{low:.3f}-{high:.3f}"


def report(
    title: str,
    metric: tuple[str, str],
    configs: list[Config],
    results: dict[str, list[dict]],
    extra: list[tuple[str, str]],
) -> None:
    """A markdown table: the metric per configuration over seeds, its paired intervals, extra columns."""
    label, key = metric
    base = results[configs[0].name]
    base_mean, base_resamples = (
        np.mean([r[key] for r in base]),
        np.mean([r["resamples"] for r in base], axis=0),
    )
    print(f"\n{title}\n")
    print(
        f"| configuration | {label}: mean ± sd over seeds | 95 % CI of the mean | difference to the first "
        "row "
        f"(95 % CI) | per seed | " + " | ".join(name for name, _ in extra) + " |"
    )
    print("| --- " * (5 + len(extra)) + "|")
    for config in configs:
        runs = results[config.name]
        values = np.array([r[key] for r in runs])
        resamples = np.mean([r["resamples"] for r in runs], axis=0)
        difference = (
            "—"
            if config is configs[0]
            else f"{values.mean() - base_mean:+.3f} ({interval(resamples - base_resamples)})"
        )
        per_seed = ", ".join(
            f"{r[key]:.3f}" + (f" ({r['cpm_ci'][0]:.2f}-{r['cpm_ci'][1]:.2f})" if "cpm_ci" in r else "")
            for r in runs
        )
        spread = values.std(ddof=1) if len(values) > 1 else float("nan")
        columns = " | ".join(f"{np.mean([r[name] for r in runs]):.3f}" for _, name in extra)
        print(
            f"| {config.name} | {values.mean():.3f} ± {spread:.3f} | {interval(resamples)} | {difference} | "
            f"{per_seed} | {columns} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=120, help="phantom scans (every 5th validates)")
    parser.add_argument("--steps", type=int, default=300, help="training batches per LUNA16 run")
    parser.add_argument("--patients", type=int, default=40, help="points phantom patients (two volumes each)")
    parser.add_argument("--points_steps", type=int, default=200, help="training batches per points run")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--parts", nargs="+", default=["candidates", "points"], choices=["candidates", "points"]
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "luna-bench-physical")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    for noisy in ("pytorch_lightning", "lightning_fabric"):  # device and tip lines of every Trainer
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "candidates" in args.parts:
        budget = f"{args.steps} steps of {args.batch_size}"
        results = run_all("candidates", CANDIDATE_CONFIGS, budget, candidate_run, args)
        first = results[CANDIDATE_CONFIGS[0].name][0]
        report(
            f"LUNA16-geometry phantom, {args.series} scans; validation: {first['scans']} scans, "
            f"{first['nodules']} nodules, {first['candidates']} candidates; {budget} per run, seeds "
            f"{args.seeds}",
            ("CPM", "cpm"),
            CANDIDATE_CONFIGS,
            results,
            [("F1 at P >= 0.5", "f1"), ("AUROC", "auroc"), ("first training loss", "first_loss")],
        )
    if "points" in args.parts:
        results = run_all("points", POINTS_CONFIGS, str(args.points_steps), points_run, args)
        first = results[POINTS_CONFIGS[0].name][0]
        report(
            "Points CSV phantom, NIfTI volumes of 0.5-1 mm in-plane and 0.5-3 mm slices, 3 classes; "
            "validation: "
            f"{first['findings']} findings; {args.points_steps} steps of {args.batch_size} per run, seeds "
            f"{args.seeds}",
            ("macro F1 (most probable class)", "f1"),
            POINTS_CONFIGS,
            results,
            [("macro AUROC", "auroc"), ("first training loss", "first_loss")],
        )


def run_all(
    part: str, configs: list[Config], budget: str, run, args: argparse.Namespace
) -> dict[str, list[dict]]:
    """Every configuration from every seed (results kept in the workdir: finished runs are reused)."""
    results: dict[str, list[dict]] = {}
    for number, config in enumerate(configs):
        results[config.name] = []
        for seed in args.seeds:
            path = args.workdir / "results" / f"{part}-{number}-seed{seed}-{budget}.json"
            results[config.name].append(
                cached(path, lambda config=config, seed=seed: run(config, args, seed))
            )
            log.info(
                "%s, seed %d: %s",
                config.name,
                seed,
                {
                    key: round(value, 3)
                    for key, value in results[config.name][-1].items()
                    if key in ("cpm", "f1", "auroc")
                },
            )
    return results


if __name__ == "__main__":
    main()
