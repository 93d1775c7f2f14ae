"""``python -m luna.tune``: hyperparameter sweeps over any ``luna.fit`` option, and seed repeats.

    python -m luna.tune --search configs/search/recipe.yaml --trials 20 --study recipe [--config ...] [--key=value ...]
    python -m luna.tune --seeds 0,1,2 --study seeds [--config ...] [--key=value ...]

An Optuna study (TPE sampler, median or Hyperband pruning per epoch) over the options a search
file names, maximising ``val/cpm`` by default. Every trial is an ordinary run of ``luna.fit`` in
``<trainer.default_root_dir>/tune/<study>/trial_N/version_0`` with the trial's values added to the
command line; every other argument is passed to every trial.

The study lives in ``<root>/tune/<study>/study.log`` (Optuna's journal file, safe on shared disks):

* **Resumable**: a killed sweep started again goes on. Finished trials are kept; a trial that was
  running in a process that died (same host: the process is gone; another host: no heartbeat for
  ``--stale_minutes``) is marked failed and its values are tried again.
* **Parallel**: several processes (or a SLURM job array, ``scripts/slurm/tune.sh``) started with the
  same folder share the study; together they finish ``--trials`` trials, each counted once.
* **DDP**: a trial may train on several devices (``--trainer.devices=4``); the processes Lightning
  starts for the other ranks run the same trial with the same values.
* A trial that fails (a bad value, an error) is recorded as failed and the sweep goes on, up to
  ``--max_failures`` failures.

At the end (and whenever a worker finishes), the folder holds ``trials.csv`` (number, state,
value, parameters), ``best.yaml`` (the best trial's whole resolved configuration: pass it to
``luna.fit --config``), and ``history.png`` and ``importances.png``. With ``--seeds``, the same
configuration runs once per seed and ``seeds.json`` gives the mean and spread of the metric.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from luna.cli.arguments import integer_list
from luna.cli.console import setup_logging
from luna.cli.errors import reason_of
from luna.data.files import process_alive, write_json_atomic, write_text_atomic

log = logging.getLogger("luna.tune")  # not __name__: this module runs as __main__
DESCRIPTION = ("Hyperparameter sweeps (Optuna) over any luna.fit option, resumable and shared by parallel "
               "workers; or a configuration repeated over seeds.")

STUDY_FILE = "study.log"
TRIAL_ENV = "LUNA_TUNE_TRIAL"  # the trial a DDP rank started by Lightning belongs to
HEARTBEAT_SECONDS = 60
KINDS = ("float", "int", "categorical")


class SearchError(ValueError):
    """A search file that cannot be used; the message names the file and the parameter."""


@dataclass(frozen=True)
class Parameter:
    """One searched option: a ``luna.fit`` key and its range.

    ``when`` makes it conditional: it is searched only in trials whose earlier parameters have
    these values (``{"model.augmentation.rotate": true}``), and left at the config's value otherwise.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict = field(default_factory=dict)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep searches and optimises (a search file)."""

    parameters: tuple[Parameter, ...]
    metric: str = "val/cpm"
    direction: str = "maximize"
    pruner: str = "median"

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's values, conditional parameters only where their condition holds."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if all(values.get(key) == wanted for key, wanted in parameter.when.items()):
                values[parameter.key] = parameter.suggest(trial)
        return values


def read_search(path: str | Path) -> SearchSpace:
    """A search file (see ``configs/search/recipe.yaml``).

    Raises:
        FileNotFoundError, SearchError: naming the file and the parameter that is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search file {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SearchError(f"{path}: not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict) or not isinstance(content.get("parameters"), dict) or not content["parameters"]:
        raise SearchError(f"{path}: expected a mapping with 'parameters' (option: range) and optionally 'metric', "
                          "'direction' and 'pruner'")
    unknown = sorted(set(content) - {"parameters", "metric", "direction", "pruner"})
    if unknown:
        raise SearchError(f"{path}: unknown entries {unknown}; expected parameters, metric, direction, pruner")
    parameters = []
    for key, spec in content["parameters"].items():
        parameters.append(_parameter(path, key, spec, [p.key for p in parameters]))
    space = SearchSpace(tuple(parameters), str(content.get("metric", "val/cpm")),
                        str(content.get("direction", "maximize")), str(content.get("pruner", "median")))
    if space.direction not in ("maximize", "minimize"):
        raise SearchError(f"{path}: direction={space.direction!r}: expected maximize or minimize")
    if space.pruner not in ("median", "hyperband", "none"):
        raise SearchError(f"{path}: pruner={space.pruner!r}: expected median, hyperband or none")
    return space


def _parameter(path: Path, key: str, spec: object, earlier: list[str]) -> Parameter:
    where = f"{path}, parameter {key}"
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise SearchError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    extra = sorted(set(spec) - {"type", "low", "high", "log", "step", "choices", "when"})
    if extra:
        raise SearchError(f"{where}: unknown field(s) {extra}")
    when = spec.get("when") or {}
    if not isinstance(when, dict) or any(name not in earlier for name in when):
        raise SearchError(f"{where}: 'when' must name parameters listed before it, with their values; got {when!r}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchError(f"{where}: a categorical parameter needs a non-empty list of choices")
        return Parameter(key, "categorical", choices=tuple(choices), when=when)
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
            or low >= high:
        raise SearchError(f"{where}: expected finite numbers low < high, got low={low!r}, high={high!r}")
    if spec.get("log") and low <= 0:
        raise SearchError(f"{where}: a log-scaled range needs low > 0, got {low}")
    if spec["type"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SearchError(f"{where}: an int parameter needs integer bounds")
    return Parameter(key, spec["type"], float(low), float(high), bool(spec.get("log", False)), spec.get("step"),
                     when=when)


def seed_space(seeds: list[int]) -> SearchSpace:
    """A 'search' that repeats the configuration once per seed (the run's and the data's seed)."""
    return SearchSpace((Parameter("seed", "categorical", choices=tuple(seeds)),), pruner="none")


def fit_arguments(values: dict[str, Any]) -> list[str]:
    """``luna.fit`` flags for a trial's values (``seed`` sets the run's and the data's seed)."""
    arguments = []
    for key, value in values.items():
        keys = ["seed_everything", "data.seed"] if key == "seed" else [key]
        text = value if isinstance(value, str) else json.dumps(value)
        arguments += [f"--{name}={text}" for name in keys]
    return arguments


# --------------------------------------------------------------------------- the study

def open_study(folder: Path, name: str, space: SearchSpace, seed: int):
    """The study in ``folder/study.log``, created on first use and loaded after."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / STUDY_FILE)
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner(), "none": optuna.pruners.NopPruner()}[space.pruner]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, study_name=name, direction=space.direction, load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)


def recover_stale(study, stale_minutes: float) -> list[int]:
    """Mark the trials whose worker died as failed and queue their values again; their numbers."""
    from optuna.trial import TrialState

    host, now, recovered = socket.gethostname(), time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if not attrs.get("worker_pid"):
            continue  # asked this very moment: its worker writes these next
        same_host = attrs.get("worker_host") == host
        dead = (same_host and not process_alive(int(attrs["worker_pid"]))) or \
            (not same_host and now - float(attrs.get("heartbeat", now)) > 60 * stale_minutes)
        if dead:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            recovered.append(trial.number)
            log.warning("trial %d was running in a process that died (%s, pid %s): marked failed, its values are "
                        "tried again", trial.number, attrs.get("worker_host"), attrs.get("worker_pid"))
    return recovered


class _Heartbeat:
    """Writes the time into the trial every minute, so workers on other hosts can tell it is alive."""

    def __init__(self, trial) -> None:
        self.trial, self.stop = trial, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            self.trial.set_user_attr("heartbeat", time.time())

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Outcome:
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None = None
    error: str | None = None


def run_trial(trial, values: dict[str, Any], space: SearchSpace, base_args: list[str], folder: Path) -> Outcome:
    """Train one trial with ``luna.fit`` in this process; its outcome."""
    from luna.callbacks.pruning import TrialPruning
    from luna.cli.fit import main

    pruning = TrialPruning(trial, space.metric)
    run_root = folder / f"trial_{trial.number}"
    arguments = ["fit", *base_args, *fit_arguments(values), f"--trainer.default_root_dir={run_root}"]
    os.environ[TRIAL_ENV] = json.dumps({"number": trial.number, "values": values, "root": str(run_root)})
    try:
        cli = main(arguments, extra_callbacks=[pruning])
    except SystemExit as stop:  # the parser's one-line error (a bad value), already printed
        return Outcome("FAIL", error=f"luna.fit exited with status {stop.code}")
    except Exception as error:  # noqa: BLE001 - any failure of one trial must not stop the sweep
        return Outcome("FAIL", error=f"{type(error).__name__}: {reason_of(error)}")
    finally:
        os.environ.pop(TRIAL_ENV, None)
    if pruning.pruned:
        return Outcome("PRUNED", pruning.reported[-1] if pruning.reported else None)
    checkpoint = cli.trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.monitor == space.metric and checkpoint.best_model_score is not None:
        return Outcome("COMPLETE", float(checkpoint.best_model_score))
    if pruning.reported:
        return Outcome("COMPLETE", pruning.reported[-1])
    return Outcome("FAIL", error=f"the run logged no {space.metric}")


def work(study, space: SearchSpace, trials: int, max_failures: int, base_args: list[str], folder: Path,
         stale_minutes: float, only_queued: bool = False) -> None:
    """Run trials until the study holds ``trials`` finished ones (counting those other workers run);
    ``only_queued``: run only the trials queued in the study (the seeds), nothing the sampler draws."""
    from optuna.trial import TrialState

    host, pid = socket.gethostname(), os.getpid()
    while True:
        recover_stale(study, stale_minutes)
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        failed = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if "error" in t.user_attrs])
        if finished + running >= trials:
            log.info("study %s: %d trials finished%s", study.study_name, finished,
                     f", {running} still running elsewhere" if running else "")
            return
        if failed >= max_failures:
            log.warning("study %s: %d trials failed (--max_failures=%d): stopping", study.study_name, failed,
                        max_failures)
            return
        if only_queued and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        trial = study.ask()
        trial.set_user_attr("worker_host", host)
        trial.set_user_attr("worker_pid", pid)
        trial.set_user_attr("heartbeat", time.time())
        try:
            values = space.suggest(trial)
        except ValueError as error:
            study.tell(trial, state=TrialState.FAIL)
            raise SearchError(f"trial {trial.number}: {error}") from None
        log.info("trial %d: %s", trial.number, " ".join(fit_arguments(values)) or "(the configuration as it is)")
        with _Heartbeat(trial):
            outcome = run_trial(trial, values, space, base_args, folder)
        if outcome.error:
            trial.set_user_attr("error", outcome.error)
            log.warning("trial %d failed: %s", trial.number, outcome.error)
        state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[outcome.state]
        study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
        log.info("trial %d: %s%s", trial.number, outcome.state.lower(),
                 f", {space.metric} {outcome.value:.4f}" if outcome.value is not None else "")


# --------------------------------------------------------------------------- the report

def write_report(study, folder: Path, space: SearchSpace, seeds: bool) -> None:
    """``trials.csv``, ``best.yaml`` and the figures (or ``seeds.json``) of the study so far."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    names = sorted({name for trial in trials for name in trial.params})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["number", "state", space.metric, *names, "error"])
    for trial in trials:
        writer.writerow([trial.number, trial.state.name, "" if trial.value is None else repr(trial.value),
                         *[trial.params.get(name, "") for name in names], trial.user_attrs.get("error", "")])
    write_text_atomic(folder / "trials.csv", text.getvalue())
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if not complete:
        return
    if seeds:
        values = [trial.value for trial in complete]
        spread = statistics.stdev(values) if len(values) > 1 else None  # the sample sd: n - 1
        summary = {"metric": space.metric, "seeds": {str(t.params["seed"]): t.value for t in complete},
                   "mean": statistics.fmean(values), "sd": spread, "min": min(values), "max": max(values)}
        write_json_atomic(folder / "seeds.json", summary, indent=1)
        log.info("%s over %d seeds: %.4f ± %.4f (sd; min %.4f, max %.4f)", space.metric, len(values),
                 summary["mean"], spread or 0.0, summary["min"], summary["max"])
        return
    best = study.best_trial
    config = sorted((folder / f"trial_{best.number}").glob("version_*/config.yaml"))
    if config:
        write_text_atomic(folder / "best.yaml", config[-1].read_text())
    log.info("best trial %d: %s %.4f with %s (its configuration: %s)", best.number, space.metric, best.value,
             " ".join(fit_arguments(best.params)), folder / "best.yaml")
    _write_figures(study, folder, len(complete))


def _write_figures(study, folder: Path, complete: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    from luna.evaluation.figures import save_png

    figures = {"history.png": lambda: plot_optimization_history(study)}
    if complete >= 2:
        figures["importances.png"] = lambda: plot_param_importances(study)
    for name, plot in figures.items():
        with contextlib.redirect_stderr(io.StringIO()):  # optuna's "experimental" warnings
            axes = plot()
        save_png(axes.get_figure(), folder / name, bbox_inches="tight")


def resolved_config(base_args: list[str], space: SearchSpace, search: Path | None) -> dict:
    """The configuration a trial starts from, as ``luna.fit --print_config`` resolves it. Every
    searched key and every passed argument must be a ``luna.fit`` option: one line naming the bad
    one, before any trial runs."""
    from luna.cli.fit import main

    trial_args = [f"--{p.key}={p.choices[0] if p.kind == 'categorical' else p.low}" for p in space.parameters
                  if p.key != "seed"]
    printed, errors = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            main(["fit", *base_args, *trial_args, "--print_config"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            line = next((text for text in errors.getvalue().splitlines() if text.startswith("error:")), "error")
            where = f"search file {search}" if search else "the command line"
            raise SearchError(f"{where}: {line.removeprefix('error: ')}") from None
    return yaml.safe_load(printed.getvalue())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m luna.tune", description=DESCRIPTION,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Every other argument is passed to each trial's python -m luna.fit.",
                                     allow_abbrev=False)
    parser.add_argument("--search", type=Path, help="the search file (configs/search/*.yaml)")
    parser.add_argument("--seeds", type=integer_list("seeds", example="0,1,2"), help="instead of a search: run the configuration once per seed, "
                        "e.g. 0,1,2, and report the mean and spread of the metric")
    parser.add_argument("--study", default=None, help="the study's name and folder (none given: the search "
                        "file's name, or 'seeds')")
    parser.add_argument("--trials", type=int, default=None, help="finished trials wanted in the study, counted over "
                        "every worker (none given: 20; with --seeds, one per seed)")
    parser.add_argument("--max_failures", type=int, default=None, help="stop after this many failed trials "
                        "(none given: --trials)")
    parser.add_argument("--sampler_seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument("--stale_minutes", type=float, default=10.0, help="a trial of another host with no "
                        "heartbeat for this long is taken as dead")
    args, base_args = parser.parse_known_args(argv)
    setup_logging()
    if (args.search is None) == (args.seeds is None):
        parser.error("give either --search FILE or --seeds LIST")
    try:
        space = seed_space(args.seeds) if args.seeds else read_search(args.search)
        ddp_trial = os.environ.get(TRIAL_ENV)
        if ddp_trial and int(os.environ.get("LOCAL_RANK", "0")) > 0:
            return _ddp_rank(json.loads(ddp_trial), space, base_args)
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
        work(study, space, trials, args.max_failures or trials, base_args, folder, args.stale_minutes,
             only_queued=bool(args.seeds))
        write_report(study, folder, space, seeds=bool(args.seeds))
    except (SearchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _ddp_rank(trial: dict, space: SearchSpace, base_args: list[str]) -> int:
    """A rank Lightning started for a DDP trial: train the same trial (rank 0 holds it in the study)."""
    from luna.callbacks.pruning import TrialPruning
    from luna.cli.fit import main as fit

    fit(["fit", *base_args, *fit_arguments(trial["values"]), f"--trainer.default_root_dir={trial['root']}"],
        extra_callbacks=[TrialPruning(None, space.metric)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
