"""Faults a user meets, injected on purpose: every case ends in a correct result or a clear error,
never in wrong crops, a hang or a lost epoch."""

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from luna.data.cache import build as cache_build
from luna.data.cache.build import build_cache
from luna.data.cache.read import CacheBuildError, CropCache
from luna.data.volume import ScanReadError
from luna.io.csvfile import CsvFormatError
from luna.luna16.datamodule import LunaDataModule
from luna.luna16.release import find_scans
from luna.luna16.sources import Luna16Candidates
from luna.models.luna_model import LunaModel
from luna.training.checkpoints import UntrustedCheckpointError
from luna.training.finetuning import load_network_weights
from luna.training.module import DivergenceError, LunaClassifier
from tests.conftest import SETTINGS
from tests.helpers import tiny_config
from tests.test_cache import tree_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_copy(phantom_cache, tmp_path):
    """A private copy of the session's cache (same key), that a test may damage."""
    return Path(shutil.copytree(phantom_cache, tmp_path / "caches" / phantom_cache.name))


def npy_of_first_image(cache_dir: Path) -> Path:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    entry = next(entry for entry in manifest["images"] if entry["crops"] > 3)
    return cache_dir / "images" / f"{entry['file']}.view0.npy"


# ------------------------------------------------------------------ the crop cache checks itself


def test_flipped_bytes_are_never_served_and_the_image_is_cut_again(
    phantom_dir, phantom_cache, cache_copy, caplog
):
    npy = npy_of_first_image(cache_copy)
    data = bytearray(npy.read_bytes())
    offset = len(data) - 3 * 147_456 + 1000  # inside a crop near the end of the file
    data[offset : offset + 64] = bytes(255 - b for b in data[offset : offset + 64])
    npy.write_bytes(bytes(data))
    damaged, original = CropCache(cache_copy), CropCache(phantom_cache)
    with caplog.at_level(logging.WARNING):
        served = [damaged.crop(k).copy() for k in range(len(damaged))]
    assert all(
        np.array_equal(a, original.crop(k)) for k, a in enumerate(served)
    )  # the damaged crop was cut again
    image = npy.name.removesuffix(".view0.npy")
    assert any(
        "damaged (checksum mismatch)" in r.getMessage() and image in r.getMessage() for r in caplog.records
    )
    assert not (npy.parent / f"{image}.json").exists()  # marked for rebuilding
    with caplog.at_level(logging.WARNING):
        build_cache(Luna16Candidates(phantom_dir), cache_copy.parent, SETTINGS)
    assert tree_bytes(cache_copy) == tree_bytes(phantom_cache)  # only that image was cut again


@pytest.mark.parametrize(
    "damage", ["truncated npy", "missing npy", "truncated manifest", "missing column", "swapped column"]
)
def test_damaged_parts_are_rebuilt_not_served_or_crashed_on(
    phantom_dir, phantom_cache, cache_copy, caplog, damage, monkeypatch
):
    npy = npy_of_first_image(cache_copy)
    if damage == "truncated npy":
        npy.write_bytes(npy.read_bytes()[:100_000])
    elif damage == "missing npy":
        npy.unlink()
    elif damage == "truncated manifest":
        manifest = cache_copy / "manifest.json"
        manifest.write_bytes(manifest.read_bytes()[:200])
    elif damage == "missing column":
        (cache_copy / "columns" / "label.npy").unlink()
    else:
        np.save(
            cache_copy / "columns" / "offset_irc.view0.npy",
            np.load(cache_copy / "columns" / "offset_irc.view0.npy")[:10],
        )
    reads = []
    real_read = cache_build.Volume.read
    monkeypatch.setattr(
        cache_build.Volume, "read", lambda path, *a, **k: reads.append(path) or real_read(path, *a, **k)
    )
    with caplog.at_level(logging.WARNING):
        assert build_cache(Luna16Candidates(phantom_dir), cache_copy.parent, SETTINGS) == cache_copy
    assert tree_bytes(cache_copy) == tree_bytes(phantom_cache)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert len(reads) == (1 if "npy" in damage else 0)  # that image only, or none


def test_a_header_that_disagrees_with_its_voxel_file_is_an_error_naming_it(phantom_copy, tmp_path):
    header = sorted(phantom_copy.glob("subset*/*.mhd"))[0]
    text = header.read_text()
    dims = next(line for line in text.splitlines() if line.startswith("DimSize"))
    x, y, z = (int(v) for v in dims.split("=")[1].split())
    header.write_text(text.replace(dims, f"DimSize = {x} {y} {z - 1}"))  # the .raw holds one slice more
    with pytest.raises(ScanReadError, match=rf"{header.stem}.*holds {x * y * z * 2:,} bytes but the header"):
        build_cache(Luna16Candidates(phantom_copy), tmp_path, SETTINGS)


def test_a_complete_cache_on_read_only_storage_is_used_as_it_is(phantom_dir, phantom_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_build, "check_writable", refuse)
    monkeypatch.setattr(cache_build, "_write_atomic", refuse)
    assert build_cache(Luna16Candidates(phantom_dir), phantom_cache.parent, SETTINGS) == phantom_cache


@pytest.mark.parametrize(
    "message", ["[Errno 28] No space left on device", "2359296 requested and 1548224 written"]
)
def test_a_full_disk_names_the_file_the_bytes_needed_and_the_free_space(
    phantom_dir, tmp_path, monkeypatch, message
):
    def full(handle, array, allow_pickle=False):
        raise OSError(errno.ENOSPC, message) if "Errno" in message else OSError(message)

    monkeypatch.setattr(cache_build.np, "save", full)
    with pytest.raises(
        CacheBuildError,
        match=r"no space left on the device for .*images/.*\.npy: it needs [\d,]+ bytes, "
        r"[\d,]+ are free in ",
    ):
        build_cache(Luna16Candidates(phantom_dir), tmp_path, SETTINGS)


@pytest.mark.e2e
def test_builder_workers_die_with_a_killed_builder(phantom_dir, tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from luna.data.cache import build as cache_build
        from luna.luna16.sources import Luna16Candidates
        from tests.conftest import SETTINGS
        def sleepy(*job):
            time.sleep(600)
        sleepy.__module__, sleepy.__qualname__ = cache_build.__name__, "_cut_image"  # pickled by that name
        cache_build._cut_image = sleepy
        cache_build.build_cache(Luna16Candidates(sys.argv[1]), sys.argv[2], SETTINGS, processes=2)
    """)
    builder = subprocess.Popen([sys.executable, "-c", script, str(phantom_dir), str(tmp_path)], cwd=ROOT)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = [
            int(p) for p in Path(f"/proc/{builder.pid}/task/{builder.pid}/children").read_text().split()
        ]
    assert len(workers) >= 2, "the pool never started"
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    deadline = time.monotonic() + 20
    while (
        any(
            Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
            for pid in workers
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not any(
        Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        for pid in workers
    )


# ------------------------------------------------------------------ bad values


def write_float_scan_with_nan(path: Path) -> None:
    image = sitk.ReadImage(str(path))
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    voxels[5, 10:12, 10:12] = np.nan
    float_image = sitk.GetImageFromArray(voxels)
    float_image.CopyInformation(image)
    sitk.WriteImage(float_image, str(path))


def test_nan_voxels_are_an_error_naming_the_scan_or_a_skipped_scan(phantom_copy, tmp_path, caplog):
    uid, path = sorted(find_scans(phantom_copy).items())[0]
    write_float_scan_with_nan(path)
    with pytest.raises(ScanReadError, match=rf"{uid} .* has 4 voxels that are NaN or infinite"):
        build_cache(Luna16Candidates(phantom_copy), tmp_path / "strict", SETTINGS)
    with caplog.at_level(logging.WARNING):
        cache = CropCache(
            build_cache(Luna16Candidates(phantom_copy), tmp_path / "lenient", SETTINGS, skip_bad_scans=True)
        )
    assert cache.manifest["skipped_images"] == [uid]


@pytest.mark.parametrize(
    "csv_name, column, value",
    [
        ("candidates.csv", "coordY", "nan"),
        ("candidates.csv", "coordX", "inf"),
        ("candidates.csv", "coordZ", "1e400"),
        ("annotations.csv", "diameter_mm", "nan"),
    ],
)
def test_non_finite_coordinates_and_diameters_name_file_line_and_column(
    phantom_copy, tmp_path, csv_name, column, value
):
    path = phantom_copy / csv_name
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[3].split(",")
    fields[header.index(column)] = value
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        CsvFormatError, match=rf"{csv_name}, line 4, column {column}: '{value}' is not a finite number"
    ):
        build_cache(Luna16Candidates(phantom_copy), tmp_path, SETTINGS)


# ------------------------------------------------------------------ dying runs


class NanAfter(torch.nn.Module):
    """LunaModel whose logits become NaN from the ``steps``-th training forward on."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.model, self.steps, self.calls = LunaModel(), steps, 0

    def forward(self, x):
        logits = self.model(x)[0]
        if self.training:
            self.calls += 1
            if self.calls > self.steps:
                return logits * float("nan")
        return logits


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    phantom_dir, cache_root, tmp_path
):
    import pytorch_lightning as pl

    from luna.callbacks.checkpoint import RunCheckpoint

    datamodule = LunaDataModule(
        phantom_dir,
        cache_dir=cache_root,
        batch_size=8,
        num_workers=0,
        negatives_per_positive=1,
        samples_per_epoch=32,
    )
    checkpoint = RunCheckpoint(dirpath=tmp_path, save_last=True, monitor="val/f1", mode="max")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
        callbacks=[checkpoint],
        num_sanity_val_steps=0,
    )
    with pytest.raises(DivergenceError, match="became NaN or infinite at step 6 \\(epoch 1\\)"):
        trainer.fit(LunaClassifier(network=NanAfter(steps=6), channels_last=False), datamodule=datamodule)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 4  # the end of epoch 0, before the NaN
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_validation_of_nan_outputs_warns_and_does_not_crash(phantom_dir, cache_root, tmp_path, caplog):
    import pytorch_lightning as pl

    datamodule = LunaDataModule(phantom_dir, cache_dir=cache_root, batch_size=8, num_workers=0)
    broken = NanAfter(steps=0)
    broken.eval()
    module = LunaClassifier(network=broken, channels_last=False)
    module.network.forward = lambda x: LunaModel.forward(broken.model, x)[0] * float("nan")
    with caplog.at_level(logging.WARNING):
        metrics = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
            module, datamodule=datamodule, verbose=False
        )[0]
    assert metrics["val/nonfinite"] == len(datamodule.val_dataset) and metrics["val/samples"] == 0
    assert any("non-finite probabilities" in r.getMessage() for r in caplog.records)


SIGNAL_AT = """
import os, signal
import pytorch_lightning as pl

class SignalAt(pl.Callback):
    def __init__(self, step: int, signal_name: str = "SIGTERM"):
        self.step, self.signal_name = step, signal_name
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
"""


def fit(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "luna.fit", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.e2e
def test_sigterm_saves_the_true_last_step_exits_non_zero_and_the_resumed_run_equals_an_uninterrupted_one(
    phantom_dir, cache_root, tmp_path
):
    (tmp_path / "stopper.py").write_text(SIGNAL_AT)
    common = {"data": {"num_workers": 2, "samples_per_epoch": 48}, "trainer": {"max_epochs": 2}}
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    merged = yaml.safe_load(config.read_text())
    merged["data"].update(common["data"])
    merged["trainer"].update(common["trainer"])
    merged["model"] = {"augmentation": {"flip_irc": [True, True, True], "offset": 0.1, "noise_hu": 25.0}}
    config.write_text(yaml.safe_dump(merged))
    env_path = f"{tmp_path}:{ROOT}"
    uninterrupted = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.fit",
            "--config",
            str(config),
            f"--trainer.default_root_dir={tmp_path / 'a'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    stopped = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.fit",
            "--config",
            str(config),
            f"--trainer.default_root_dir={tmp_path / 'b'}",
            "--trainer.callbacks+=stopper.SignalAt",
            "--trainer.callbacks.step=8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = tmp_path / "b" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 8 and saved["epoch"] == 1  # mid-epoch 1 (6 steps per epoch)
    assert "stopped by SIGTERM at epoch 1, step 8" in stopped.stderr
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.fit",
            "--config",
            str(config),
            f"--trainer.default_root_dir={tmp_path / 'b'}",
            f"--ckpt_path={last}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "b" / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 12)
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


def resume_config(tmp_path: Path, phantom_dir: Path, cache_root: Path) -> Path:
    """Loader workers on (the default), 2 steps per epoch, random augmentation: what resuming must repeat."""
    config = tiny_config(tmp_path / "resume.yaml", phantom_dir, cache_root, tmp_path / "runs", num_workers=2)
    merged = yaml.safe_load(config.read_text())
    merged["model"] = {"augmentation": {"flip_irc": [True, True, True], "offset": 0.1, "noise_hu": 25.0}}
    config.write_text(yaml.safe_dump(merged))
    return config


def assert_same_run(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert (first["epoch"], first["global_step"]) == (second["epoch"], second["global_step"])
    for name, value in first["state_dict"].items():
        assert torch.allclose(value.double(), second["state_dict"][name].double(), rtol=0, atol=1e-6), name


@pytest.mark.e2e  # a whole run, several seconds: the e2e tier
def test_resuming_an_end_of_epoch_checkpoint_with_loader_workers_repeats_a_straight_run(
    phantom_dir, cache_root, tmp_path
):
    """The README's example: a 2-epoch run resumed to 4 epochs trains the same steps and weights as 4
    straight."""
    from luna.cli.fit import main

    config = resume_config(tmp_path, phantom_dir, cache_root)
    main(["--config", str(config), "--trainer.max_epochs=4", f"--trainer.default_root_dir={tmp_path / 'a'}"])
    main(["--config", str(config), "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path / 'b'}"])
    first = tmp_path / "b" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(first, weights_only=False)["global_step"] == 4
    main(
        [
            "--config",
            str(config),
            "--trainer.max_epochs=4",
            f"--trainer.default_root_dir={tmp_path / 'b'}",
            f"--ckpt_path={first}",
        ]
    )
    straight = tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(straight, weights_only=False)["global_step"] == 8
    assert_same_run(straight, tmp_path / "b" / "version_1" / "checkpoints" / "last.ckpt")


@pytest.mark.e2e
def test_a_run_killed_mid_epoch_resumes_from_the_last_epoch_end_as_if_never_killed(
    phantom_dir, cache_root, tmp_path
):
    (tmp_path / "stopper.py").write_text(SIGNAL_AT)
    config = resume_config(tmp_path, phantom_dir, cache_root)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "luna.fit",
            "--config",
            str(config),
            "--trainer.max_epochs=3",
            f"--trainer.default_root_dir={tmp_path / 'b'}",
            "--trainer.callbacks+=stopper.SignalAt",
            "--trainer.callbacks.step=5",
            "--trainer.callbacks.signal_name=SIGKILL",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "b" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the end of epoch 1, not step 5
    for root, extra in (("a", []), ("b", [f"--ckpt_path={last}"])):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "luna.fit",
                "--config",
                str(config),
                "--trainer.max_epochs=3",
                f"--trainer.default_root_dir={tmp_path / root}",
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    assert_same_run(
        tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt",
        tmp_path / "b" / "version_1" / "checkpoints" / "last.ckpt",
    )


# ------------------------------------------------------------------ messages and trust


@pytest.mark.e2e
def test_cli_value_errors_are_one_line_without_a_traceback(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    for flag, message in (
        ("--data.batch_size=-1", "error: batch_size=-1: must be an integer >= 1"),
        (
            f"--data.data_dir={tmp_path / 'typo'}",
            f"error: data_dir={tmp_path / 'typo'}: the LUNA16 folder does not exist",
        ),
        ("--evaluation.tta_flips=[[5]]", "error: tta_flips=[[5]]"),
    ):
        result = fit(config, flag)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
    assert not (tmp_path / "runs").exists()  # nothing was written


class Untrusted:
    """Anything but tensors: torch refuses to unpickle it with weights_only=True."""


def test_init_checkpoint_loads_weights_only_unless_trusted(tmp_path):
    weights = LunaClassifier(channels_last=False)
    luna_ckpt = tmp_path / "luna.ckpt"
    torch.save(
        {
            "state_dict": {f"network.{k}": v for k, v in weights.network.state_dict().items()},
            "hyper_parameters": {"augmentation": weights.augmentation},
        },
        luna_ckpt,
    )
    fresh = LunaModel()
    load_network_weights(fresh, luna_ckpt)  # luna's own configuration types are allowed
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), weights.network.state_dict().values(), strict=True)
    )
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "extra": Untrusted()}, hostile)
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true"):
        load_network_weights(LunaModel(), hostile)


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from luna.callbacks.checkpoint import AtomicCheckpointIO
    from luna.io import files

    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "weights": torch.ones(1000)}, path)
    real_open = open

    def filling(file, mode="r", *args, **kwargs):  # a disk that fills after 500 bytes of the next file
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            write = handle.write

            def partial(data):
                write(bytes(data)[:500])
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = partial
        return handle

    monkeypatch.setattr(files, "open", filling, raising=False)
    with pytest.raises(
        files.DiskFullError, match=r"no space left on the device for .*last\.ckpt: it needs [\d,]+ bytes"
    ):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MB file system (tmpfs): too small for one checkpoint of the tiny model and its optimizer."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.e2e
def test_fit_on_a_full_disk_says_so_in_one_line_and_leaves_no_broken_checkpoint(
    phantom_dir, cache_root, tmp_path, small_filesystem, capsys, monkeypatch
):
    from tests.helpers import last_error_line, run_cli

    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, small_filesystem / "runs")
    code, stderr = run_cli(["--config", str(config)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in stderr
    assert re.match(
        r"error: no space left on the device for .*\.ckpt: it needs [\d,]+ bytes, [\d,]+ are free",
        last_error_line(stderr),
    ), stderr[-2000:]
    for checkpoint in small_filesystem.rglob("*.ckpt"):
        torch.load(checkpoint, weights_only=False)  # every checkpoint under a final name loads
    assert not list(small_filesystem.rglob("*.tmp"))
