"""``python -m luna.tune``: sweeps that resume, share a study between processes, prune, survive a
failing trial and refuse a bad search file; seed repeats."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from luna.callbacks.pruning import MetricNotLogged
from luna.cli.tune import main, train
from luna.experiments.search import SearchError, SearchSpace, fit_arguments, read_search, seed_space
from luna.experiments.study import open_study, run_trial, work
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def search_file(path: Path, parameters: dict, **top) -> Path:
    path.write_text(
        yaml.safe_dump(
            {"metric": "val/auroc", "pruner": "none", **top, "parameters": parameters}, sort_keys=False
        )
    )
    return path


def trials_of(folder: Path) -> list[dict]:
    with (folder / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


LR = {"model.optimizer.init_args.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


@pytest.mark.parametrize(
    "parameters, message",
    [
        (
            {"model.lr": {"type": "float", "low": 0.1, "high": 0.2}},
            r"parameter model\.lr: expected",
        ),  # no range given right
        (
            {"data.batch_size": {"type": "int", "low": 8, "high": 4}},
            r"parameter data\.batch_size: expected finite numbers low < high",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "log": True}},
            r"parameter x: a log-scaled range needs low > 0",
        ),
        (
            {"x": {"type": "categorical", "choices": []}},
            r"parameter x: a categorical parameter needs a non-empty list",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "when": {"y": 1}}},
            r"parameter x: 'when' must name parameters listed before it",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "spread": 2}},
            r"parameter x: unknown field\(s\) \['spread'\]",
        ),
    ],
)
def test_a_bad_search_file_names_the_file_and_the_parameter(tmp_path, parameters, message):
    if "model.lr" in parameters:
        parameters["model.lr"].pop("low")
    path = search_file(tmp_path / "bad.yaml", parameters)
    with pytest.raises(SearchError, match=rf"bad\.yaml, {message}"):
        read_search(path)


@pytest.mark.parametrize(
    "top, parameters, message",
    [
        ({"metric": "val/cmp"}, LR, r"metric='val/cmp' is not logged by luna: did you mean val/cpm\?"),
        (
            {},
            {
                "model.augmentation.rotate": {"type": "categorical", "choices": [False, True]},
                "model.augmentation.noise_hu": {
                    "type": "float",
                    "low": 0,
                    "high": 50,
                    "when": {"model.augmentation.rotate": "true"},
                },
            },
            r"parameter model\.augmentation\.noise_hu: when model\.augmentation\.rotate='true' \(str\) "
            r"never holds: "
            r"model\.augmentation\.rotate takes \[False, True\]",
        ),
        (
            {},
            {"x": {"type": "float", "low": 0.1, "high": 1, "log": "no"}},
            r"parameter x: log='no': expected true or false",
        ),
        (
            {},
            {"x": {"type": "int", "low": 1, "high": 4, "step": 0}},
            r"parameter x: step=0: expected a positive number",
        ),
    ],
)
def test_search_file_mistakes_that_would_pass_are_named_before_any_trial(tmp_path, top, parameters, message):
    path = search_file(tmp_path / "bad.yaml", parameters, **top)
    with pytest.raises(SearchError, match=rf"bad\.yaml, {message}" if "parameter" in message else message):
        read_search(path)


def test_the_shipped_search_file_runs(phantom_dir, cache_root, tmp_path):
    """configs/search/recipe.yaml as the README runs it (its int range included), one trial on the phantom."""
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = ROOT / "configs" / "search" / "recipe.yaml"
    assert any(parameter.kind == "int" for parameter in read_search(search).parameters)
    assert main(["--search", str(search), "--trials", "1", "--config", str(config)]) == 0
    rows = trials_of(tmp_path / "runs" / "tune" / "recipe")
    assert [row["state"] for row in rows] == ["COMPLETE"] and rows[0]["data.negatives_per_positive"] in "1234"


def test_a_metric_no_run_logs_stops_the_sweep_at_the_first_trial(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(tmp_path / "s.yaml", LR, metric="val/recall/no-such-class")
    with pytest.raises(MetricNotLogged, match="val/recall/no-such-class"):
        main(["--search", str(search), "--trials", "3", "--config", str(config)])
    assert len(list((tmp_path / "runs" / "tune" / "s").glob("trial_*"))) == 1


class FakeRun:
    """What ``train`` returns, without training: the metric is a function of the values."""

    def __init__(self, values: dict, metric: str) -> None:
        checkpoint = type("Checkpoint", (), {"monitor": metric, "best_model_score": sum(values.values())})
        self.trainer = type("Trainer", (), {"checkpoint_callback": checkpoint})


def fake_train(arguments: list[str], callbacks: list):
    values = {a[2:].split("=")[0]: float(a.split("=")[1]) for a in arguments if a.startswith("--model.")}
    return FakeRun(values, callbacks[0].monitor)


def test_workers_on_one_study_and_a_restarted_worker_never_draw_the_same_values(tmp_path):
    import threading

    space = SearchSpace(
        tuple(read_search(search_file(tmp_path / "s.yaml", LR)).parameters), metric="val/auroc", pruner="none"
    )
    folder = tmp_path / "tune"
    workers = [
        threading.Thread(
            target=work, args=(open_study(folder, "s", space, 0), space, 6, 6, [], folder, 10.0, fake_train)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    restarted = open_study(folder, "s", space, 0)  # a new process on the same study: same seed, later trials
    assert work(restarted, space, 9, 9, [], folder, 10.0, fake_train)
    drawn = [
        tuple(trial.params.values()) for trial in restarted.get_trials() if trial.state.name == "COMPLETE"
    ]
    assert len(drawn) == 9 and len(set(drawn)) == 9


def test_a_draw_that_repeats_a_trial_is_drawn_again(tmp_path):
    space = SearchSpace(
        tuple(
            read_search(
                search_file(tmp_path / "s.yaml", {"model.a": {"type": "categorical", "choices": [1.0, 2.0]}})
            ).parameters
        ),
        metric="val/auroc",
        pruner="none",
    )
    study = open_study(tmp_path / "tune", "s", space, 0)
    assert not work(
        study, space, 3, 3, [], tmp_path / "tune", 10.0, fake_train
    )  # two values exist, not three
    finished = [trial.params["model.a"] for trial in study.get_trials() if trial.state.name == "COMPLETE"]
    assert sorted(finished) == [1.0, 2.0]


@pytest.mark.e2e
def test_sigterm_during_a_trial_stops_the_sweep_and_a_restart_retries_it(phantom_dir, cache_root, tmp_path):
    config = tiny_config(
        tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs", samples_per_epoch=64
    )
    search = search_file(tmp_path / "search.yaml", LR, pruner="none")
    command = [
        sys.executable,
        "-m",
        "luna.tune",
        "--search",
        str(search),
        "--trials",
        "3",
        "--study",
        "s",
        "--config",
        str(config),
        "--trainer.max_epochs=3",
    ]
    folder = tmp_path / "runs" / "tune" / "s"
    worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(folder.glob("trial_1/version_0/checkpoints/*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)  # trial 1 is training: it has written a checkpoint
    worker.send_signal(signal.SIGTERM)
    stderr = worker.communicate(timeout=300)[1]
    assert worker.returncode == 143, stderr[-3000:]
    assert "no new trial started" in stderr and not (folder / "trial_2").exists()
    study = open_study(folder, "s", read_search(search), 0)
    interrupted = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0].number == 1 and "error" not in interrupted[0].user_attrs
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = open_study(folder, "s", read_search(search), 0).get_trials()
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) == 3
    retried = next(t for t in finished if t.user_attrs.get("retry_of") == 1)
    assert retried.params == interrupted[0].params and "resuming trial 1's run" in again.stderr


def test_a_search_file_with_an_unknown_key_is_one_line_before_any_trial(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(
        tmp_path / "typo.yaml",
        {"model.optimizer.init_args.learning_rate": LR["model.optimizer.init_args.lr"]},
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.tune",
            "--search",
            str(search),
            "--trials",
            "2",
            "--config",
            str(config),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: search file {search}: --model.optimizer.init_args.learning_rate is not an option"
    ), line
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_a_failing_trial_does_not_stop_the_study(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(
        tmp_path / "search.yaml", {"data.batch_size": {"type": "categorical", "choices": [8, -1]}}
    )
    study = open_study(tmp_path / "runs" / "tune" / "s", "s", read_search(search), 0)
    study.enqueue_trial({"data.batch_size": -1})  # the first trial takes a value luna.fit refuses
    study.enqueue_trial({"data.batch_size": 8})
    study.enqueue_trial({"data.batch_size": 8})
    assert main(["--search", str(search), "--trials", "2", "--study", "s", "--config", str(config)]) == 0
    rows = trials_of(tmp_path / "runs" / "tune" / "s")
    failed = [row for row in rows if row["state"] == "FAIL"]
    assert [row["state"] for row in rows].count("COMPLETE") == 2 and failed
    assert all("batch_size=-1: must be an integer >= 1" in row["error"] for row in failed)
    best = yaml.safe_load((tmp_path / "runs" / "tune" / "s" / "best.yaml").read_text())
    assert (
        best["data"]["init_args"]["batch_size"] == 8
        and (tmp_path / "runs" / "tune" / "s" / "history.png").is_file()
    )


class PruneAtOnce:
    """An Optuna trial whose pruner gives up at the first report."""

    number = 0

    def __init__(self) -> None:
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True


def test_a_pruned_trial_stops_after_its_first_validation(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    trial = PruneAtOnce()
    space = SearchSpace((), metric="val/auroc")
    outcome = run_trial(
        trial, {}, space, ["--config", str(config), "--trainer.max_epochs=3"], tmp_path / "tune", train
    )
    assert outcome.state == "PRUNED" and [step for step, _ in trial.reports] == [0]
    last = torch_load(next((tmp_path / "tune" / "trial_0").glob("version_*/checkpoints/last.ckpt")))
    assert last["epoch"] == 0


def torch_load(path):
    import torch

    return torch.load(path, weights_only=False)


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_seeds_repeat_a_configuration_and_report_its_spread(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    assert main(["--seeds", "0,1", "--config", str(config), "--data.negatives_per_positive=1"]) == 0
    folder = tmp_path / "runs" / "tune" / "seeds"
    summary = json.loads((folder / "seeds.json").read_text())
    assert sorted(summary["seeds"]) == ["0", "1"] and summary["min"] <= summary["mean"] <= summary["max"]
    configs = [
        yaml.safe_load(next((folder / f"trial_{k}").glob("version_*/config.yaml")).read_text())
        for k in (0, 1)
    ]
    assert sorted((c["seed_everything"], c["data"]["init_args"]["seed"]) for c in configs) == [(0, 0), (1, 1)]
    assert (
        main(["--seeds", "0,1", "--config", str(config), "--data.negatives_per_positive=1"]) == 0
    )  # nothing to redo
    assert len(trials_of(folder)) == 2


@pytest.mark.slow
def test_two_workers_killed_and_restarted_finish_every_trial_once(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(tmp_path / "search.yaml", LR, pruner="median")
    command = [
        sys.executable,
        "-m",
        "luna.tune",
        "--search",
        str(search),
        "--trials",
        "8",
        "--study",
        "sweep",
        "--config",
        str(config),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    folder = tmp_path / "runs" / "tune" / "sweep"
    deadline = time.monotonic() + 300
    while len(list(folder.glob("trial_*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    workers[0].send_signal(signal.SIGKILL)  # in the middle of a trial
    workers[0].wait()
    assert workers[1].wait(timeout=600) == 0, workers[1].stderr.read()[-3000:]
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    study = open_study(folder, "sweep", read_search(search), 0)
    states = [trial.state.name for trial in study.get_trials()]
    assert states.count("COMPLETE") + states.count("PRUNED") == 8
    killed = [trial for trial in study.get_trials() if trial.state.name == "FAIL"]
    assert len(killed) == 1 and "error" not in killed[0].user_attrs  # the trial of the killed worker
    assert len({trial.number for trial in study.get_trials()}) == len(states)
    assert any(trial.user_attrs.get("retry_of") == killed[0].number for trial in study.get_trials())
    rows = trials_of(folder)
    assert len(rows) == len(states) and (folder / "best.yaml").is_file()


def test_the_seed_space_sets_the_run_and_data_seeds():
    assert seed_space([3]).parameters[0].choices == (3,)
    assert fit_arguments(
        {"seed": 3, "data.batch_size": 8, "model.augmentation.flip_irc": "[true, true, true]"}
    ) == [
        "--seed_everything=3",
        "--data.seed=3",
        "--data.batch_size=8",
        "--model.augmentation.flip_irc=[true, true, true]",
    ]
