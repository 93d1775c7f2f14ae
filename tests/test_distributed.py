"""Multi-process behaviour, for real: 2 DDP processes (gloo on CPU) against 1, and SLURM launches."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import tiny_config
from tests.test_cache import tree_bytes

ROOT = Path(__file__).resolve().parents[1]
SCALARS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auroc",
    "average_precision",
    "calibration_error",
    "loss",
    "loss_positive",
    "loss_negative",
    "samples",
    "f1_best",
    "f1_best_threshold",
    "cpm",
)


def luna(*args, env=None, timeout=300):
    result = subprocess.run(
        [sys.executable, "-m", "luna.fit", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def last_metrics(run_dir: Path, stage: str) -> dict[str, float]:
    rows = [row for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get(f"{stage}/f1")]
    return {name: float(rows[-1][f"{stage}/{name}"]) for name in SCALARS}


DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]


@pytest.fixture(scope="module")
def trained(phantom_dir, cache_root, tmp_path_factory):
    """A checkpoint from a short single-process run, and the config that made it."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = tiny_config(tmp / "tiny.yaml", phantom_dir, cache_root, tmp / "runs", val_stride=5)
    luna("--config", str(config))
    return config, tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_ddp_evaluation_equals_one_process(trained, tmp_path, stage):
    config, checkpoint = trained
    results = {}
    evaluations = checkpoint.parent.parent / stage  # in the checkpoint's own run
    for processes, extra in ((1, []), (2, DDP)):
        before = set(evaluations.glob("version_*"))
        luna(stage, "--config", str(config), f"--ckpt_path={checkpoint}", *extra)
        (folder,) = set(evaluations.glob("version_*")) - before
        results[processes] = last_metrics(folder, "val" if stage == "validate" else "test")
    one, two = results[1], results[2]
    assert one["samples"] == two["samples"] == split_size(config)
    for name in SCALARS:
        assert two[name] == pytest.approx(one[name], abs=1e-6), name


@pytest.mark.e2e
def test_ddp_predictions_equal_one_process(trained, tmp_path):
    config, checkpoint = trained
    outputs = {}
    for processes, extra in ((1, []), (2, DDP)):
        outputs[processes] = tmp_path / f"p{processes}.csv"
        luna(
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={checkpoint}",
            f"--predictions.path={outputs[processes]}",
            f"--trainer.default_root_dir={tmp_path / str(processes)}",
            *extra,
        )
    one, two = (list(csv.reader(outputs[k].open())) for k in (1, 2))
    assert len(one) == split_size(config) + 1 and [r[:4] for r in one] == [r[:4] for r in two]
    assert all(abs(float(a[4]) - float(b[4])) < 1e-6 for a, b in zip(one[1:], two[1:], strict=True))
    about = {k: json.loads(outputs[k].with_suffix(".json").read_text()) for k in (1, 2)}
    assert about[2]["rows"] == about[1]["rows"] == len(one) - 1  # every rank's rows counted once
    assert about[2]["images"] == about[1]["images"] == sorted({row[0] for row in one[1:]})


def split_size(config: Path) -> int:
    from luna.luna16.datamodule import LunaDataModule

    data = yaml.safe_load(config.read_text())["data"]
    dm = LunaDataModule(data["data_dir"], cache_dir=data["cache_dir"], val_stride=data["val_stride"])
    dm.setup()
    return len(dm.val_dataset)


@pytest.mark.e2e
def test_the_evaluation_split_is_odd_so_ranks_get_uneven_shares(trained):
    assert split_size(trained[0]) % 2 == 1


@pytest.mark.e2e
def test_two_processes_on_an_empty_cache_build_once_and_both_train(phantom_dir, phantom_cache, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, tmp_path / "cache", tmp_path / "runs")
    result = luna("--config", str(config), *DDP)
    log = result.stdout + result.stderr
    assert len(re.findall(r"crop cache .*: cutting 12 of 12 images", log)) == 1, log[-3000:]
    assert tree_bytes(tmp_path / "cache" / phantom_cache.name) == tree_bytes(phantom_cache)
    hparams = yaml.safe_load((tmp_path / "runs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["world_size"] == 2 and hparams["global_batch_size"] == 16
    rows = [
        r
        for r in csv.DictReader((tmp_path / "runs" / "version_0" / "metrics.csv").open())
        if r.get("train/samples")
    ]
    assert float(rows[-1]["train/samples"]) == 16  # both ranks' 8 samples, synchronised


@pytest.mark.e2e
def test_a_failed_build_stops_every_rank_with_its_error(phantom_copy, tmp_path):
    raw = sorted(phantom_copy.glob("subset*/*.raw"))[0]
    raw.write_bytes(raw.read_bytes()[:2048])
    config = tiny_config(tmp_path / "tiny.yaml", phantom_copy, tmp_path / "cache", tmp_path / "runs")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "luna.fit", "--config", str(config), *DDP],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert result.returncode != 0
    assert raw.stem in result.stderr
    assert time.monotonic() - started < 200  # no hang at a barrier


SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "luna-test",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
}


def test_lightning_reads_world_size_and_ranks_from_slurm(monkeypatch):
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from lightning_utilities.core.rank_zero import rank_zero_only

    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    # the Trainer sets the process-wide rank_zero_only.rank (to 1 here): restore it after the test
    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, num_nodes=1, logger=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (2, 1, 1, 0)


SBATCH = sorted((ROOT / "scripts" / "slurm").glob("*.sbatch"))


def stub(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
    (bin_dir / name).chmod(0o755)


def shellcheck(script: Path | str) -> None:
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-x", str(script)], check=True, cwd=ROOT)


def submit(
    tmp_path: Path, script: str, sbatch_reply: str, *args: str
) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a submitting script with ``sbatch`` stubbed: the stub records its arguments, one call a
    line, and then runs ``sbatch_reply`` (which prints the job id); the run and the record."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch.calls"
    stub(bin_dir, "sbatch", f'echo "$@" >> {calls}\n{sbatch_reply}\n')
    shellcheck(script)
    done = subprocess.run(
        ["bash", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    return done, calls


def slurm_env(tmp_path: Path, bin_dir: Path, directives: dict) -> dict:
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_NTASKS_PER_NODE": directives["ntasks-per-node"],
        "SLURM_NNODES": directives["nodes"],
        "LUNA_RUNS": str(tmp_path / "runs"),
    }


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_scripts_parse_and_launch_what_they_allocate(script, tmp_path):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck(script)
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script.read_text(), re.M))
    assert directives["ntasks-per-node"] == directives.get("gpus-per-node", directives["ntasks-per-node"])
    bin_dir = tmp_path / "bin"
    if script.name == "crossval_merge.sbatch":  # CPU only, no srun: record the command it runs
        stub(bin_dir, "python", f'echo "$@" > {tmp_path / "python.args"}\n')
        done = subprocess.run(
            ["bash", str(script), "--config", "x.yaml"],
            env=slurm_env(tmp_path, bin_dir, directives),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "python.args").read_text().split() == [
            "-m",
            "luna.crossval",
            "--merge_only",
            "--output",
            str(tmp_path / "runs" / "crossval"),
            "--config",
            "x.yaml",
        ]
        return
    if script.name == "prepare.sbatch":  # CPU only, no srun: the cache luna.prepare would build, and where
        env = {**slurm_env(tmp_path, bin_dir, directives), "SLURM_CPUS_PER_TASK": directives["cpus-per-task"]}
        refused = subprocess.run(["bash", str(script)], env=env, cwd=ROOT, capture_output=True, text=True)
        assert (
            refused.returncode != 0 and "set LUNA_CACHE" in refused.stderr
        )  # never a node-local scratch folder
        printed = subprocess.run(
            ["bash", str(script), "--print_config"],
            env={**env, "LUNA_CACHE": str(tmp_path / "c")},
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert printed.returncode == 0, printed.stderr[-3000:]
        data = yaml.safe_load(printed.stdout)["data"]["init_args"]
        assert data["cache_dir"] == str(tmp_path / "c") and data["build_processes"] == int(
            directives["cpus-per-task"]
        )
        return
    if script.name == "tune.sbatch":  # every array task is a worker of one study: record what it runs
        stub(
            bin_dir,
            "srun",
            f'while [[ "$1" == --* ]]; do shift; done\necho "$@" > {tmp_path / "srun.args"}\n',
        )
        done = subprocess.run(
            ["bash", str(script), "--search", "s.yaml", "--trials", "8"],
            cwd=ROOT,
            env=slurm_env(tmp_path, bin_dir, directives),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        args = (tmp_path / "srun.args").read_text().split()
        assert args[:3] == ["python", "-m", "luna.tune"] and args[-4:] == [
            "--search",
            "s.yaml",
            "--trials",
            "8",
        ]
        assert f"--trainer.default_root_dir={tmp_path / 'runs'}" in args  # the study lives on LUNA_RUNS
        return
    assert directives["signal"] == "SIGUSR1@90"
    # Run the script as SLURM would, with `srun` replaced by a stub that prints the config luna.fit gets.
    if script.name == "crossval.sbatch":  # the fold task runs luna.crossval: record what it is given
        stub(
            bin_dir,
            "srun",
            f'while [[ "$1" == --* ]]; do shift; done\necho "$@" > {tmp_path / "srun.args"}\n',
        )
    else:
        stub(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@" --print_config\n')
    printed = subprocess.run(
        ["bash", str(script)],
        env=slurm_env(tmp_path, bin_dir, directives),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    if script.name == "crossval.sbatch":
        args = (tmp_path / "srun.args").read_text().split()
        assert args[:3] == ["python", "-m", "luna.crossval"]
        own = ["--no_merge", "--folds", "3", "--output", str(tmp_path / "runs" / "crossval")]
        assert [a for a in args[3:] if a in own] == own
        fit_args = [a for a in args[3:] if a not in own]  # what luna.crossval passes on to luna.fit
        printed = subprocess.run(
            [sys.executable, "-m", "luna.fit", *fit_args, "--print_config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert printed.returncode == 0, printed.stderr[-3000:]
        assert (
            yaml.safe_load(printed.stdout)["data"]["init_args"]["shared_cache"] is True
        )  # one cache for all folds
    config = yaml.safe_load(printed.stdout)
    assert int(config["trainer"]["devices"]) == int(directives["ntasks-per-node"])
    assert config["trainer"]["num_nodes"] == int(directives["nodes"])
    assert config["trainer"]["strategy"] == "ddp"
    assert config["trainer"]["default_root_dir"].startswith(str(tmp_path / "runs"))
    assert config["trainer"]["logger"] is None  # the run's loggers follow default_root_dir


def test_a_sweep_is_submitted_as_one_array_of_workers(tmp_path):
    done, calls = submit(
        tmp_path, "scripts/slurm/tune.sh", "echo 4321", "3", "--search", "s.yaml", "--trials", "9"
    )
    assert done.returncode == 0, done.stderr
    assert calls.read_text().split() == [
        "--parsable",
        "--array=0-2",
        str(ROOT / "scripts/slurm/tune.sbatch"),
        "--search",
        "s.yaml",
        "--trials",
        "9",
    ]
    refused, _ = submit(tmp_path, "scripts/slurm/tune.sh", "echo 4321", "zero")
    assert refused.returncode == 2 and "WORKERS must be a positive number" in refused.stderr


def test_crossval_submission_makes_the_merge_wait_for_every_fold(tmp_path):
    done, calls = submit(
        tmp_path,
        "scripts/slurm/crossval.sh",
        'if [[ "$*" == *crossval.sbatch* ]]; then echo 1234; else echo 1235; fi',
        "--config",
        "x.yaml",
    )
    assert done.returncode == 0, done.stderr
    first, second = calls.read_text().splitlines()
    assert first.endswith("crossval.sbatch --config x.yaml")
    assert "--dependency=afterok:1234" in second and second.endswith("crossval_merge.sbatch --config x.yaml")


PAUSE = """
import time
from pathlib import Path
import pytorch_lightning as pl

class PauseForSignal(pl.Callback):
    # At a step, say so (a file) and wait until the SLURM signal handler has saved its checkpoint.
    def __init__(self, step: int, ready: str):
        self.step, self.ready = step, ready
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            Path(self.ready).touch()
            while not list(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
                time.sleep(0.05)  # the signal handler runs between these sleeps
"""


def wait_for(path: Path, job: subprocess.Popen) -> None:
    """Until ``path`` exists (an event of the job), or the job ends without it."""
    while not path.exists():
        assert job.poll() is None, job.communicate()[0][-3000:]
        time.sleep(0.05)


@pytest.mark.e2e
def test_sigusr1_saves_a_checkpoint_requeues_and_the_restart_resumes(phantom_dir, cache_root, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    (tmp_path / "pause.py").write_text(PAUSE)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "luna-test",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }
    runs = tmp_path / "runs"
    ready = tmp_path / "ready"
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, runs, samples_per_epoch=64)
    args = [sys.executable, "-m", "luna.fit", "--config", str(config), "--trainer.max_epochs=2"]
    job = subprocess.Popen(
        args
        + [
            "--trainer.callbacks+=pause.PauseForSignal",
            "--trainer.callbacks.step=3",
            f"--trainer.callbacks.ready={ready}",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(ready, job)  # the job is at step 3 and waits for the signal
    job.send_signal(signal.SIGUSR1)
    output, _ = job.communicate()
    assert job.returncode == 0, output[-3000:]
    hpc = sorted(runs.glob("hpc_ckpt_*.ckpt"))
    assert hpc, output[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "weights_only" not in output  # Lightning's note on its own save: nothing a user can act on
    saved = torch.load(hpc[-1], weights_only=False)
    assert saved["global_step"] == 3
    # The "requeued" job starts again with the same command: it must resume from the HPC checkpoint.
    restarted = subprocess.run(
        args + ["--trainer.max_epochs=3"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in restarted.stdout + restarted.stderr
    assert "hpc_ckpt" in restarted.stdout + restarted.stderr
    rows = list(csv.DictReader((runs / "version_1" / "metrics.csv").open()))
    assert min(int(r["step"]) for r in rows) >= saved["global_step"] > 0  # continued, not restarted from zero
    epochs = sorted({int(r["epoch"]) for r in rows if r["epoch"]})
    assert epochs[0] == saved["epoch"] and epochs[-1] == 2
