"""``python -m luna.tune``: hyperparameter sweeps over any ``luna.fit`` option, and seed repeats.

    python -m luna.tune --search configs/search/recipe.yaml --trials 20 --study recipe [--config ...] \
        [--key=value ...]
    python -m luna.tune --seeds 0,1,2 --study seeds [--config ...] [--key=value ...]

An Optuna study (TPE sampler, median or Hyperband pruning per epoch) over the options a search
file names (``luna.experiments.search``). Every trial is an ordinary run of ``luna.fit`` in
``<trainer.default_root_dir>/tune/<study>/trial_N/version_0`` with the trial's values added to the
command line; every other argument is passed to every trial. The study is resumable, stoppable
with SIGTERM and shared by parallel workers (``luna.experiments.study``). The folder then holds
``trials.csv``, ``best.yaml`` (pass it to ``luna.fit --config``), ``history.png`` and
``importances.png``, or ``seeds.json`` with ``--seeds``.

Exit status: 0 when the study holds the asked trials, 1 when it stopped short (too many failed
trials, or no new values left to draw), 2 for a mistake in the command or the search file, 143
when stopped by SIGTERM (rerun the same command to go on).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
from pathlib import Path

import yaml

from luna.cli.arguments import integer_list
from luna.cli.errors import run_command
from luna.experiments.report import write_study_report
from luna.experiments.search import SearchError, SearchSpace, fit_arguments, read_search, seed_space
from luna.experiments.study import TRIAL_ENV, SweepStopped, open_study, work

log = logging.getLogger("luna.tune")  # not __name__: this module runs as __main__
DESCRIPTION = (
    "Hyperparameter sweeps (Optuna) over any luna.fit option, resumable and shared by parallel "
    "workers; or a configuration repeated over seeds."
)


def train(arguments: list[str], callbacks: list):
    """One trial: ``luna.fit`` in this process, with the sweep's callbacks."""
    from luna.cli.fit import main as fit

    return fit(arguments, extra_callbacks=callbacks)


def resolved_config(base_args: list[str], space: SearchSpace, search: Path | None) -> dict:
    """The configuration a trial starts from, as ``luna.fit --print_config`` resolves it. Every
    searched key (at a value of its own type) and every passed argument must be a ``luna.fit``
    option: one line naming the bad one, before any trial runs."""
    from luna.cli.fit import main

    trial_args = fit_arguments({p.key: p.example() for p in space.parameters if p.key != "seed"})
    printed, errors = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            main(["fit", *base_args, *trial_args, "--print_config"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            line = next(
                (text for text in errors.getvalue().splitlines() if text.startswith("error:")), "error"
            )
            where = f"search file {search}" if search else "the command line"
            raise SearchError(f"{where}: {line.removeprefix('error: ')}") from None
    return yaml.safe_load(printed.getvalue())


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m luna.tune",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Every other argument is passed to each trial's python -m luna.fit.",
        allow_abbrev=False,
    )
    parser.add_argument("--search", type=Path, help="the search file (configs/search/*.yaml)")
    parser.add_argument(
        "--seeds",
        type=integer_list("seeds", example="0,1,2"),
        help="instead of a search: run the "
        "configuration once per seed, e.g. 0,1,2, and report the mean and spread of the metric",
    )
    parser.add_argument(
        "--study",
        default=None,
        help="the study's name and folder (none given: the search file's name, or 'seeds')",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="finished trials wanted in the study, counted over "
        "every worker (none given: 20; with --seeds, one per seed)",
    )
    parser.add_argument(
        "--max_failures",
        type=int,
        default=None,
        help="stop after this many failed trials (none given: --trials)",
    )
    parser.add_argument(
        "--sampler_seed",
        type=int,
        default=0,
        help="seed of the TPE sampler (each trial's draws come from this and the trial's number)",
    )
    parser.add_argument(
        "--stale_minutes",
        type=float,
        default=10.0,
        help="a trial of another host with no heartbeat for this long is taken as dead",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args, base_args = parser().parse_known_args(argv)
    if (args.search is None) == (args.seeds is None):
        parser().error("give either --search FILE or --seeds LIST")
    space = seed_space(args.seeds) if args.seeds else read_search(args.search)
    ddp_trial = os.environ.get(TRIAL_ENV)
    if ddp_trial and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return _ddp_rank(json.loads(ddp_trial), space)
    trials = len(args.seeds) if args.seeds else (args.trials or 20)
    if trials < 1:
        raise SearchError(f"--trials={trials}: must be at least 1")
    name = args.study or ("seeds" if args.seeds else args.search.stem)
    config = resolved_config(base_args, space, args.search)
    folder = Path((config.get("trainer") or {}).get("default_root_dir") or "logs") / "tune" / name
    study = open_study(folder, name, space, args.sampler_seed)
    if args.seeds:
        for seed in args.seeds:
            study.enqueue_trial({"seed": seed}, skip_if_exists=True)
    try:
        reached = work(
            study,
            space,
            trials,
            args.max_failures or trials,
            base_args,
            folder,
            args.stale_minutes,
            train,
            args.sampler_seed,
            only_queued=bool(args.seeds),
        )
    except SweepStopped as stopped:
        log.warning("%s: no new trial started; run the same command again to go on", stopped)
        write_study_report(study, folder, space, seeds=bool(args.seeds))
        return 128 + signal.SIGTERM
    write_study_report(study, folder, space, seeds=bool(args.seeds))
    return 0 if reached else 1


def _ddp_rank(trial: dict, space: SearchSpace) -> int:
    """A rank Lightning started for a DDP trial: train the same trial (rank 0 holds it in the study)."""
    from luna.callbacks.pruning import TrialPruning

    train(trial["arguments"], [TrialPruning(None, space.metric)])
    return 0


def cli() -> None:
    """``main`` with a user's mistakes in one line (exit status 2)."""
    run_command(main)


if __name__ == "__main__":
    cli()
