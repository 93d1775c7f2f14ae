"""A sweep's study and its workers: trials asked, trained, told, and never lost or repeated.

The study lives in ``<folder>/study.log`` (Optuna's journal file, safe on shared disks):

* **Resumable**: a killed sweep started again goes on. Finished trials are kept; a trial that was
  running in a process that died (same host: the process is gone; another host: no heartbeat for
  ``stale_minutes``) is marked failed and its values are tried again, resuming from its last
  checkpoint when it wrote one.
* **Stoppable**: SIGTERM (what SLURM sends before a time limit or on ``scancel``) stops the trial
  at the step it reached (its ``last.ckpt`` is written), queues its values again, starts nothing
  new and ends the worker with status 143. The next worker resumes that trial from its checkpoint.
* **Parallel**: several processes (or a SLURM job array) started on the same folder share the
  study; together they finish the asked number of trials, each counted once. Each trial draws its
  values from a sampler seeded by ``(sampler_seed, trial number)``, so workers started together
  never draw alike, and a restarted worker does not repeat the trials before it; a draw equal to
  a trial already run or running is drawn again.
* **DDP**: a trial may train on several devices; the processes Lightning starts for the other ranks
  run the same trial (``TRIAL_ENV``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from luna.callbacks.pruning import MetricNotLogged, TrialPruning
from luna.experiments.search import SearchSpace, fit_arguments
from luna.io.files import process_alive

log = logging.getLogger(__name__)

STUDY_FILE = "study.log"
TRIAL_ENV = "LUNA_TUNE_TRIAL"  # the trial a DDP rank started by Lightning belongs to
HEARTBEAT_SECONDS = 60
MAX_REDRAWS = 50  # draws in a row equal to earlier trials before the space is taken as exhausted
# what trains one trial: luna.fit's main(arguments, extra_callbacks) -> the CLI object (its .trainer)
Train = Callable[[list[str], list], Any]


class SweepStopped(Exception):
    """The worker was sent SIGTERM: its trial is queued again, and nothing new starts."""


def open_study(folder: Path, name: str, space: SearchSpace, seed: int):
    """The study in ``folder/study.log``, created on first use and loaded after."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / STUDY_FILE)
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "hyperband": optuna.pruners.HyperbandPruner(),
        "none": optuna.pruners.NopPruner(),
    }[space.pruner]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction=space.direction,
        load_if_exists=True,
        sampler=_sampler(seed, 0),
        pruner=pruner,
    )


def _sampler(seed: int, trial_number: int):
    """The TPE sampler of one trial: seeded by the sweep's seed and the trial's own number, so two
    workers never draw alike and a rerun draws the same values for the same trial."""
    import optuna

    derived = int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=derived)


def retry(study, trial, reason: str) -> None:
    """Mark a trial failed (not counted as a failure) and queue its values again."""
    from optuna.trial import TrialState

    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retry_reason": reason})


def recover_stale(study, stale_minutes: float) -> list[int]:
    """Mark the trials whose worker died as failed and queue their values again; their numbers."""
    from optuna.trial import TrialState

    host, now, recovered = socket.gethostname(), time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if not attrs.get("worker_pid"):
            continue  # asked this very moment: its worker writes these next
        same_host = attrs.get("worker_host") == host
        dead = (same_host and not process_alive(int(attrs["worker_pid"]))) or (
            not same_host and now - float(attrs.get("heartbeat", now)) > 60 * stale_minutes
        )
        if dead:
            retry(study, trial, "its worker died")
            recovered.append(trial.number)
            log.warning(
                "trial %d was running in a process that died (%s, pid %s): marked failed, its values are "
                "tried again",
                trial.number,
                attrs.get("worker_host"),
                attrs.get("worker_pid"),
            )
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


class _Termination:
    """SIGTERM in a worker: remembered, and raised as Lightning's ``SIGTERMException`` when it
    arrives outside a run (a run handles it itself: it saves ``last.ckpt`` and raises that)."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        self.received = True
        if signal.getsignal(signal.SIGTERM) == self._handle:  # not inside a run: nothing else will stop
            raise SIGTERMException

    def __enter__(self) -> _Termination:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclass
class Outcome:
    state: str  # COMPLETE, PRUNED, FAIL or INTERRUPTED (SIGTERM)
    value: float | None = None
    error: str | None = None


def interrupted_checkpoint(folder: Path, trial_number: int) -> Path | None:
    """The ``last.ckpt`` an interrupted trial left (the newest), or None."""
    found = list((folder / f"trial_{trial_number}").glob("version_*/checkpoints/last.ckpt"))
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def run_trial(
    trial, values: dict[str, Any], space: SearchSpace, base_args: list[str], folder: Path, train: Train
) -> Outcome:
    """Train one trial with ``train`` (``luna.fit``'s main) in this process; its outcome. A retried
    trial resumes from the checkpoint its interrupted predecessor left."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    pruning = TrialPruning(trial, space.metric)
    run_root = folder / f"trial_{trial.number}"
    arguments = ["fit", *base_args, *fit_arguments(values), f"--trainer.default_root_dir={run_root}"]
    retried = trial.user_attrs.get("retry_of") if hasattr(trial, "user_attrs") else None
    resume = interrupted_checkpoint(folder, retried) if retried is not None else None
    if resume is not None:
        log.info("trial %d: resuming trial %d's run from %s", trial.number, retried, resume)
        arguments.append(f"--ckpt_path={resume}")
    os.environ[TRIAL_ENV] = json.dumps({"number": trial.number, "arguments": arguments})
    try:
        cli = train(arguments, [pruning])
    except SIGTERMException:
        return Outcome("INTERRUPTED")
    except MetricNotLogged:
        raise
    except SystemExit as stop:  # the parser's one-line error (a bad value), already printed
        return Outcome("FAIL", error=f"luna.fit exited with status {stop.code}")
    except Exception as error:  # noqa: BLE001 - any failure of one trial must not stop the sweep
        return Outcome("FAIL", error=f"{type(error).__name__}: {' '.join(str(error).split())[:1000]}")
    finally:
        os.environ.pop(TRIAL_ENV, None)
    if pruning.pruned:
        return Outcome("PRUNED", pruning.reported[-1] if pruning.reported else None)
    checkpoint = cli.trainer.checkpoint_callback
    if (
        checkpoint is not None
        and checkpoint.monitor == space.metric
        and checkpoint.best_model_score is not None
    ):
        return Outcome("COMPLETE", float(checkpoint.best_model_score))
    if pruning.reported:
        return Outcome("COMPLETE", pruning.reported[-1])
    raise MetricNotLogged(f"the runs do not log the sweep's metric {space.metric}")


def _duplicate(study, trial, values: dict[str, Any]) -> int | None:
    """The number of a finished, running or queued trial with exactly ``values``, or None."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return next(
        (
            other.number
            for other in study.get_trials(deepcopy=False, states=states)
            if other.number != trial.number and other.params == values
        ),
        None,
    )


def work(
    study,
    space: SearchSpace,
    trials: int,
    max_failures: int,
    base_args: list[str],
    folder: Path,
    stale_minutes: float,
    train: Train,
    sampler_seed: int = 0,
    only_queued: bool = False,
) -> bool:
    """Run trials until the study holds ``trials`` finished ones (counting those other workers run);
    ``only_queued``: run only the trials queued in the study (the seeds), nothing the sampler draws.

    Returns:
        Whether the study reached ``trials`` (False: too many failures, or the space is exhausted).

    Raises:
        SweepStopped: SIGTERM; the running trial is queued again.
        MetricNotLogged: the first finished trial never logged the sweep's metric.
    """
    from optuna.trial import TrialState

    host, pid, redraws = socket.gethostname(), os.getpid(), 0
    with _Termination() as termination:
        while True:
            if termination.received:
                raise SweepStopped("stopped by SIGTERM")
            recover_stale(study, stale_minutes)
            finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            failed = len(
                [
                    t
                    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if "error" in t.user_attrs
                ]
            )
            if finished + running >= trials:
                log.info(
                    "study %s: %d trials finished%s",
                    study.study_name,
                    finished,
                    f", {running} still running elsewhere" if running else "",
                )
                return finished >= trials or running > 0
            if failed >= max_failures:
                log.warning(
                    "study %s: %d trials failed (--max_failures=%d): stopping",
                    study.study_name,
                    failed,
                    max_failures,
                )
                return False
            if only_queued and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return True
            queued = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
            trial = study.ask()
            study.sampler = _sampler(sampler_seed, trial.number)  # draws at suggest time, after ask
            for name, value in (("worker_host", host), ("worker_pid", pid), ("heartbeat", time.time())):
                trial.set_user_attr(name, value)
            values = space.suggest(trial)
            # queued values (seeds, retries, a user's enqueue_trial) run as given; drawn ones never repeat
            same = _duplicate(study, trial, values) if trial.number not in queued else None
            if same is not None:
                trial.set_user_attr("duplicate_of", same)
                study.tell(trial, state=TrialState.FAIL)
                redraws += 1
                if redraws >= MAX_REDRAWS:
                    log.warning(
                        "study %s: %d draws in a row repeated earlier trials: the search space looks "
                        "exhausted; stopping",
                        study.study_name,
                        redraws,
                    )
                    return False
                continue
            redraws = 0
            log.info(
                "trial %d: %s",
                trial.number,
                " ".join(fit_arguments(values)) or "(the configuration as it is)",
            )
            with _Heartbeat(trial):
                outcome = run_trial(trial, values, space, base_args, folder, train)
            if outcome.state == "INTERRUPTED":
                retry(study, trial, "SIGTERM")
                log.warning(
                    "trial %d: stopped by SIGTERM; its values are queued again (the next worker resumes it "
                    "from its last checkpoint)",
                    trial.number,
                )
                raise SweepStopped(f"stopped by SIGTERM during trial {trial.number}")
            if outcome.error:
                trial.set_user_attr("error", outcome.error)
                log.warning("trial %d failed: %s", trial.number, outcome.error)
            state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}
            study.tell(
                trial, outcome.value if outcome.state == "COMPLETE" else None, state=state[outcome.state]
            )
            log.info(
                "trial %d: %s%s",
                trial.number,
                outcome.state.lower(),
                f", {space.metric} {outcome.value:.4f}" if outcome.value is not None else "",
            )
