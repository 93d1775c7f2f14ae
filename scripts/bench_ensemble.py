"""The ten fold models of a cross-validation, alone and as one ensemble, on scans none of them saw.

    python scripts/bench_ensemble.py [--workdir DIR] [--epochs 4] [--heldout_series 60] [--heldout_seed 100]

1. ``python -m luna.crossval`` on the default phantom (240 scans, ten subsets), each fold trained
   for ``--epochs`` epochs (resumable: finished folds are kept in the work folder).
2. A held-out phantom of ``--heldout_series`` scans drawn with another seed (same generator, same
   geometry), predicted by each fold's model (``luna.fit predict``) and by the ensemble of all ten
   (``luna.crossval --ensemble``: the mean probability).
3. Every prediction file scored on the held-out scans (FROC, CPM) with 1,000 bootstrap resamples of
   the scans, the same resamples for all of them, so that differences pair up.

The fair single-model baseline is the fold chosen by its own held-out subset's CPM (what a user
could pick without the test set); the best fold on the held-out scans themselves is shown too, as
an optimistic bound. One cross-validation, one seed: the spread given is over the ten fold models.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from luna.evaluation.froc import cpm_resamples
from luna.luna16.scoring import evaluate_submission

RESAMPLES = 1000


def run(*arguments: str) -> None:
    subprocess.run([sys.executable, *arguments], check=True)


def interval(values: np.ndarray) -> str:
    values = np.sort(values[np.isfinite(values)])
    return f"{values[int(0.025 * len(values))]:.3f}-{values[int(0.975 * len(values))]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "luna-bench-ensemble")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--heldout_series", type=int, default=60)
    parser.add_argument("--heldout_seed", type=int, default=100)
    args = parser.parse_args()
    work = args.workdir
    crossval = work / "crossval"
    common = [
        f"--trainer.default_root_dir={work / 'runs'}",
        f"--data.cache_dir={work / 'cache'}",
        "--trainer.enable_progress_bar=false",
    ]
    run("-m", "luna.crossval", "--output", str(crossval), f"--trainer.max_epochs={args.epochs}", *common)
    own_fold_cpm = {
        int(fold): record["cpm"]
        for fold, record in json.loads((crossval / "crossval.json").read_text())["candidates"][
            "per_fold"
        ].items()
    }

    heldout = work / "heldout"
    if not (heldout / "phantom.json").is_file():
        run(
            "-m",
            "luna.phantom",
            "luna16",
            str(heldout),
            "--series",
            str(args.heldout_series),
            "--seed",
            str(args.heldout_seed),
            "--subsets",
            "1",
        )
    on_heldout = [f"--data.data_dir={heldout}", "--data.phantom=null", "--data.eval_images=all", *common]
    predictions = work / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    files = {}
    for fold in sorted(own_fold_cpm):
        files[f"fold {fold}"] = predictions / f"fold{fold}.csv"
        if not files[f"fold {fold}"].is_file():
            checkpoint = json.loads((crossval / f"fold{fold}" / "trained.json").read_text())["checkpoint"]
            run(
                "-m",
                "luna.fit",
                "predict",
                f"--ckpt_path={checkpoint}",
                f"--predictions.path={files[f'fold {fold}']}",
                *on_heldout,
            )
    files["ensemble"] = predictions / "ensemble.csv"
    if not files["ensemble"].is_file():
        run("-m", "luna.crossval", "--ensemble", "--output", str(crossval), *on_heldout)
        (crossval / "ensemble" / "predictions.csv").replace(files["ensemble"])

    scored = {}
    for name, path in files.items():
        evaluation = evaluate_submission(path, heldout, bootstrap_samples=0)
        scored[name] = (
            evaluation.result.cpm,
            cpm_resamples(evaluation.marks, evaluation.reference, RESAMPLES, seed=0),
        )
    counts = evaluation.result.counts
    singles = [name for name in scored if name != "ensemble"]
    chosen = max(singles, key=lambda name: own_fold_cpm[int(name.split()[1])])
    oracle = max(singles, key=lambda name: scored[name][0])
    ensemble_cpm, ensemble_resamples = scored["ensemble"]
    single_cpms = np.array([scored[name][0] for name in singles])
    print(
        f"\nheld-out phantom: {counts.scans} scans, {counts.nodules} nodules (seed {args.heldout_seed}); "
        f"{len(singles)} fold models trained {args.epochs} epochs each; {RESAMPLES} paired bootstrap "
        "resamples "
        "of the held-out scans\n"
    )
    print("| model | held-out CPM | 95 % CI | its own fold's CPM (selection) |")
    print("| --- | --- | --- | --- |")
    for name in singles:
        print(
            f"| {name} | {scored[name][0]:.3f} | {interval(scored[name][1])} | "
            f"{own_fold_cpm[int(name.split()[1])]:.3f} |"
        )
    print(
        f"| ensemble of {len(singles)} (mean probability) | {ensemble_cpm:.3f} | "
        f"{interval(ensemble_resamples)} | — |"
    )
    print(
        f"\nsingle fold models: mean {single_cpms.mean():.3f} ± {single_cpms.std(ddof=1):.3f} (sd over the "
        "folds), "
        f"range {single_cpms.min():.3f}-{single_cpms.max():.3f}"
    )
    for label, name in (
        ("the fold chosen by its own subset's CPM", chosen),
        ("the best fold on these scans (optimistic)", oracle),
    ):
        difference = ensemble_resamples - scored[name][1]
        print(
            f"ensemble - {label} ({name}): {ensemble_cpm - scored[name][0]:+.3f} (paired 95 % CI "
            f"{interval(difference)})"
        )


if __name__ == "__main__":
    main()
