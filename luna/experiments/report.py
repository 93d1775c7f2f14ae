"""What a sweep leaves for its user: ``trials.csv``, ``best.yaml``, ``history.png`` and
``importances.png`` (or ``seeds.json`` for seed repeats), rewritten whenever a worker finishes."""

from __future__ import annotations

import csv
import io
import logging
import statistics
from pathlib import Path

import numpy as np

from luna.experiments.search import SearchSpace, fit_arguments
from luna.io.files import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def write_study_report(study, folder: Path, space: SearchSpace, seeds: bool) -> None:
    """``trials.csv``, ``best.yaml`` and the figures (or ``seeds.json``) of the study so far.

    Redrawn duplicates (trials told failed because their draw repeated an earlier trial) are
    bookkeeping, not trials: they are left out.
    """
    from optuna.trial import TrialState

    trials = [trial for trial in study.get_trials(deepcopy=False) if "duplicate_of" not in trial.user_attrs]
    names = sorted({name for trial in trials for name in trial.params})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["number", "state", space.metric, *names, "error"])
    for trial in trials:
        note = trial.user_attrs.get("error") or (
            f"retried: {trial.user_attrs['retry_reason']}"
            if trial.state == TrialState.FAIL and "retry_reason" in trial.user_attrs
            else ""
        )
        writer.writerow(
            [
                trial.number,
                trial.state.name,
                "" if trial.value is None else repr(trial.value),
                *[trial.params.get(name, "") for name in names],
                note,
            ]
        )
    write_text_atomic(folder / "trials.csv", text.getvalue())
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if not complete:
        return
    if seeds:
        _write_seeds(folder, space, complete)
        return
    best = study.best_trial
    config = sorted((folder / f"trial_{best.number}").glob("version_*/config.yaml"))
    if config:
        write_text_atomic(folder / "best.yaml", config[-1].read_text())
    log.info(
        "best trial %d: %s %.4f with %s (its configuration: %s)",
        best.number,
        space.metric,
        best.value,
        " ".join(fit_arguments(best.params)),
        folder / "best.yaml",
    )
    _write_figures(study, folder, space, complete)


def _write_seeds(folder: Path, space: SearchSpace, complete: list) -> None:
    values = [trial.value for trial in complete]
    spread = statistics.stdev(values) if len(values) > 1 else None  # the sample sd: n - 1
    summary = {
        "metric": space.metric,
        "seeds": {str(t.params["seed"]): t.value for t in complete},
        "mean": statistics.fmean(values),
        "sd": spread,
        "min": min(values),
        "max": max(values),
    }
    write_json_atomic(folder / "seeds.json", summary, indent=1)
    log.info(
        "%s over %d seeds: %.4f ± %.4f (sd; min %.4f, max %.4f)",
        space.metric,
        len(values),
        summary["mean"],
        spread or 0.0,
        summary["min"],
        summary["max"],
    )


def _write_figures(study, folder: Path, space: SearchSpace, complete: list) -> None:
    """The history (each trial's metric and the best so far, by trial number) and, from two
    finished trials on, Optuna's parameter importances, labelled with the sweep's metric."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from luna.evaluation.figures import save_png

    numbers = np.array([trial.number for trial in complete])
    values = np.array([trial.value for trial in complete])
    best = np.maximum.accumulate(values) if space.direction == "maximize" else np.minimum.accumulate(values)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    ax.plot(numbers, values, "o", color="C0", label=f"{space.metric} of a trial")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="trial",
        ylabel=space.metric,
        title=f"{study.study_name}: {len(complete)} finished trials ({space.direction})",
    )
    ax.legend(loc="best", fontsize=8)
    save_png(fig, folder / "history.png", bbox_inches="tight")
    if len(complete) < 2 or not any(trial.params for trial in complete):
        return
    import optuna

    importances = optuna.importance.get_param_importances(study)
    if not importances:
        return
    fig = Figure(figsize=(6.4, 0.5 + 0.35 * len(importances)))
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[name] for name in names], color="C0")
    ax.set(
        xlabel=f"importance for {space.metric} (fANOVA, share of its variance)",
        title=f"{study.study_name}: parameter importances over {len(complete)} trials",
    )
    save_png(fig, folder / "importances.png", bbox_inches="tight")
