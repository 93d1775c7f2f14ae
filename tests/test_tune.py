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

from luna.cli.tune import SearchError, SearchSpace, main, open_study, read_search, run_trial, seed_space
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def search_file(path: Path, parameters: dict, **top) -> Path:
    path.write_text(yaml.safe_dump({"metric": "val/auroc", "pruner": "none", **top, "parameters": parameters}))
    return path


def trials_of(folder: Path) -> list[dict]:
    with (folder / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


LR = {"model.optimizer.init_args.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


@pytest.mark.parametrize("parameters, message", [
    ({"model.lr": {"type": "float", "low": 0.1, "high": 0.2}}, r"parameter model\.lr: expected"),  # no range given right
    ({"data.batch_size": {"type": "int", "low": 8, "high": 4}}, r"parameter data\.batch_size: expected finite numbers low < high"),
    ({"x": {"type": "float", "low": 0, "high": 1, "log": True}}, r"parameter x: a log-scaled range needs low > 0"),
    ({"x": {"type": "categorical", "choices": []}}, r"parameter x: a categorical parameter needs a non-empty list"),
    ({"x": {"type": "float", "low": 0, "high": 1, "when": {"y": 1}}}, r"parameter x: 'when' must name parameters listed before it"),
    ({"x": {"type": "float", "low": 0, "high": 1, "spread": 2}}, r"parameter x: unknown field\(s\) \['spread'\]"),
])
def test_a_bad_search_file_names_the_file_and_the_parameter(tmp_path, parameters, message):
    if "model.lr" in parameters:
        parameters["model.lr"].pop("low")
    path = search_file(tmp_path / "bad.yaml", parameters)
    with pytest.raises(SearchError, match=rf"bad\.yaml, {message}"):
        read_search(path)


def test_a_search_file_with_an_unknown_key_is_one_line_before_any_trial(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(tmp_path / "typo.yaml", {"model.optimizer.init_args.learning_rate": LR[
        "model.optimizer.init_args.lr"]})
    result = subprocess.run([sys.executable, "-m", "luna.tune", "--search", str(search), "--trials", "2",
                             "--config", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: search file {search}: --model.optimizer.init_args.learning_rate is not an option"), line
    assert not (tmp_path / "runs").exists()


def test_a_failing_trial_does_not_stop_the_study(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(tmp_path / "search.yaml", {"data.batch_size": {"type": "categorical", "choices": [8, -1]}})
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
    assert best["data"]["init_args"]["batch_size"] == 8 and (tmp_path / "runs" / "tune" / "s" / "history.png").is_file()


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
    outcome = run_trial(trial, {}, space, ["--config", str(config), "--trainer.max_epochs=3"], tmp_path / "tune")
    assert outcome.state == "PRUNED" and [step for step, _ in trial.reports] == [0]
    last = torch_load(next((tmp_path / "tune" / "trial_0").glob("version_*/checkpoints/last.ckpt")))
    assert last["epoch"] == 0


def torch_load(path):
    import torch

    return torch.load(path, weights_only=False)


def test_seeds_repeat_a_configuration_and_report_its_spread(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    assert main(["--seeds", "0,1", "--config", str(config), "--data.negatives_per_positive=1"]) == 0
    folder = tmp_path / "runs" / "tune" / "seeds"
    summary = json.loads((folder / "seeds.json").read_text())
    assert sorted(summary["seeds"]) == ["0", "1"] and summary["min"] <= summary["mean"] <= summary["max"]
    configs = [yaml.safe_load(next((folder / f"trial_{k}").glob("version_*/config.yaml")).read_text()) for k in (0, 1)]
    assert sorted((c["seed_everything"], c["data"]["init_args"]["seed"]) for c in configs) == [(0, 0), (1, 1)]
    assert main(["--seeds", "0,1", "--config", str(config), "--data.negatives_per_positive=1"]) == 0  # nothing to redo
    assert len(trials_of(folder)) == 2


@pytest.mark.slow
def test_two_workers_killed_and_restarted_finish_every_trial_once(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    search = search_file(tmp_path / "search.yaml", LR, pruner="median")
    command = [sys.executable, "-m", "luna.tune", "--search", str(search), "--trials", "8", "--study", "sweep",
               "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
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
    from luna.cli.tune import fit_arguments

    assert seed_space([3]).parameters[0].choices == (3,)
    assert fit_arguments({"seed": 3, "data.batch_size": 8, "model.augmentation.flip_irc": "[true, true, true]"}) == [
        "--seed_everything=3", "--data.seed=3", "--data.batch_size=8", "--model.augmentation.flip_irc=[true, true, true]"]
