"""Inputs that lie, and mistakes a user makes: each one ends in correct data or one line that names
the file (or option) and what is wrong, never in served garbage or a traceback."""

import logging
import os
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from luna.cli.evaluate import cli as evaluate_cli
from luna.cli.run_folder import claim_version
from luna.data.cache.build import build_cache, cache_path
from luna.data.cache.read import CacheBuildError, CropCache
from luna.data.volume import ScanReadError, Volume
from luna.io.csvfile import CsvFormatError, read_columns
from luna.luna16.candidates import load_candidate_arrays
from luna.luna16.scoring import evaluate_submission
from luna.luna16.sources import Luna16Candidates
from tests.conftest import SETTINGS
from tests.helpers import last_error_line, run_cli, tiny_config

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ scans that cannot be trusted


def compressed_copy(phantom_copy: Path) -> tuple[Path, Path]:
    """The first scan of the phantom rewritten with zlib-compressed voxels: its header and ``.zraw``."""
    header = sorted(phantom_copy.glob("subset*/*.mhd"))[0]
    image = sitk.ReadImage(str(header))
    header.with_suffix(".raw").unlink()
    sitk.WriteImage(image, str(header), useCompression=True)
    return header, header.with_suffix(".zraw")


def test_a_sound_compressed_scan_reads_as_the_uncompressed_one(phantom_copy):
    header = sorted(phantom_copy.glob("subset*/*.mhd"))[0]
    plain = Volume.read(header).voxels
    compressed_copy(phantom_copy)
    assert np.array_equal(Volume.read(header).voxels, plain)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flipped", r"its compressed voxel file .*\.zraw is damaged or not compressed \(zlib: "),
        ("truncated", r"its compressed voxel file .*\.zraw ends early: [\d,]+ of [\d,]+ bytes"),
        ("not compressed", r"its compressed voxel file .*\.zraw is damaged or not compressed"),
    ],
)
def test_a_damaged_compressed_scan_is_an_error_naming_it_never_zero_crops(
    phantom_copy, tmp_path, damage, message
):
    header, data = compressed_copy(phantom_copy)
    raw = bytearray(data.read_bytes())
    if damage == "flipped":
        middle = len(raw) // 2
        raw[middle : middle + 64] = bytes(255 - b for b in raw[middle : middle + 64])
    elif damage == "truncated":
        raw = raw[: len(raw) // 3]
    else:
        raw = bytearray(zlib.decompress(bytes(raw)))  # the header still says CompressedData = True
    data.write_bytes(bytes(raw))
    with pytest.raises(ScanReadError, match=f"cannot read scan {header.stem} .*: {message}"):
        Volume.read(header)
    with pytest.raises(ScanReadError, match=message):  # the cache is never built from it
        build_cache(Luna16Candidates(phantom_copy), tmp_path, SETTINGS)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("TransformMatrix", "0 0 1 0 0 1 0 0 1", r"direction \(TransformMatrix\) .* is not a rotation"),
        ("TransformMatrix", "nan 0 0 0 1 0 0 0 1", r"direction \(TransformMatrix\) .* is not a rotation"),
        ("ElementSpacing", "-0.7 0.7 2.5", r"spacing .* is not positive and finite"),
        ("Offset", "nan 10 20", r"origin .* is not finite"),
    ],
)
def test_a_header_that_cannot_place_its_voxels_is_an_error_naming_it(phantom_copy, field, value, message):
    header = sorted(phantom_copy.glob("subset*/*.mhd"))[0]
    lines = [
        f"{field} = {value}" if line.split("=")[0].strip() == field else line
        for line in header.read_text().splitlines()
    ]
    header.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScanReadError, match=f"cannot read scan {header.stem} .*: its {message}"):
        Volume.read(header)


def test_a_header_reading_voxels_from_another_folder_is_followed_with_a_warning(phantom_copy, caplog):
    header = sorted(phantom_copy.glob("subset*/*.mhd"))[0]
    elsewhere = phantom_copy / "elsewhere"
    elsewhere.mkdir()
    shutil.move(header.with_suffix(".raw"), elsewhere / "voxels.raw")
    text = header.read_text().replace(
        f"ElementDataFile = {header.stem}.raw", "ElementDataFile = ../elsewhere/voxels.raw"
    )
    header.write_text(text)
    with caplog.at_level(logging.WARNING):
        Volume.read(header)
    assert any(
        str(header) in r.getMessage()
        and "voxels.raw" in r.getMessage()
        and "outside its own folder" in r.getMessage()
        for r in caplog.records
    )


def test_pages_swapped_inside_a_cached_crop_are_seen_and_the_crop_is_cut_again(
    phantom_dir, phantom_cache, tmp_path, caplog
):
    copy = Path(shutil.copytree(phantom_cache, tmp_path / "caches" / phantom_cache.name))
    npy = sorted((copy / "images").glob("*.view0.npy"))[0]
    data = bytearray(npy.read_bytes())
    crop_bytes, page = 32 * 48 * 48 * 2, 4096
    start = len(data) - crop_bytes  # the last crop of the file: swap two of its pages
    data[start : start + page], data[start + page : start + 2 * page] = (
        data[start + page : start + 2 * page],
        data[start : start + page],
    )
    npy.write_bytes(bytes(data))
    damaged, original = CropCache(copy), CropCache(phantom_cache)
    with caplog.at_level(logging.WARNING):
        assert all(np.array_equal(damaged.crop(k), original.crop(k)) for k in range(len(original)))
    assert sum("checksum mismatch" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------ CSVs that cannot lie


def rewrite(path: Path, transform) -> None:
    lines = path.read_text().splitlines()
    path.write_bytes(transform(lines))


def test_bom_crlf_and_spaces_around_uids_give_the_same_candidates_and_the_same_cpm(
    phantom_dir, phantom_copy, tmp_path
):
    clean = load_candidate_arrays(phantom_dir / "annotations.csv", phantom_dir / "candidates.csv")

    def messy(lines: list[str]) -> bytes:
        spaced = [lines[0]] + [f" {line.split(',', 1)[0]} ,{line.split(',', 1)[1]}" for line in lines[1:]]
        return ("\ufeff" + "\r\n".join(spaced) + "\r\n").encode()

    for name in ("annotations.csv", "candidates.csv", "annotations_excluded.csv"):
        rewrite(phantom_copy / name, messy)
    loaded = load_candidate_arrays(phantom_copy / "annotations.csv", phantom_copy / "candidates.csv")
    assert loaded.series_uids == clean.series_uids and len(loaded) == len(clean)
    assert np.array_equal(loaded.diameter_mm, clean.diameter_mm) and (clean.diameter_mm > 0).sum() > 10
    predictions = tmp_path / "predictions.csv"
    rows = read_columns(phantom_dir / "candidates.csv", ("seriesuid", "coordX", "coordY", "coordZ", "class"))
    body = [
        f" {uid} ,{x},{y},{z},{0.9 if label == '1' else 0.1}"
        for uid, x, y, z, label in zip(
            *(rows.columns[name] for name in ("seriesuid", "coordX", "coordY", "coordZ", "class")),
            strict=True,
        )
    ]
    predictions.write_bytes(
        ("\ufeffseriesuid,coordX,coordY,coordZ,probability\r\n" + "\r\n".join(body)).encode()
    )
    assert evaluate_submission(predictions, phantom_copy, bootstrap_samples=0).result.cpm == 1.0


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("annotations.csv", "0", False),
        ("annotations.csv", "-1", False),
        ("annotations_excluded.csv", "0", False),
        ("annotations_excluded.csv", "-1", True),
    ],
)
def test_a_zero_or_negative_nodule_diameter_is_an_error_naming_the_line(phantom_copy, name, value, allowed):
    path = phantom_copy / name
    lines = path.read_text().splitlines()
    first = lines[1].rsplit(",", 1)[0]
    path.write_text("\n".join([lines[0], f"{first},{value}", *lines[2:]]) + "\n")
    if allowed:
        evaluate_submission(write_empty_predictions(phantom_copy), phantom_copy, bootstrap_samples=0)
        return
    match = rf"{name}, line 2, column diameter_mm: '{value}' is not a positive diameter"
    with pytest.raises(CsvFormatError, match=match):
        evaluate_submission(write_empty_predictions(phantom_copy), phantom_copy, bootstrap_samples=0)
    if name == "annotations.csv":
        with pytest.raises(CsvFormatError, match=match):
            load_candidate_arrays(phantom_copy / "annotations.csv", phantom_copy / "candidates.csv")


def write_empty_predictions(folder: Path) -> Path:
    path = folder / "empty-predictions.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,probability\n")
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"seriesuid,coordX,coordY,coordZ,class\n1.2.3,1,2,3,0\n1.2.\xe9,1,2,3,0\n",
            r"line 3: not UTF-8 text \(byte 0xe9\)",
        ),
        (
            b"seriesuid,coordX,coordY,coordZ,class\n" + b"x" * 200_000 + b",1,2,3,0\n",
            r"line 2: field larger than field limit",
        ),
        (
            b"seriesuid,coordX,coordY,coordZ,coordX,class\n1.2.3,1,2,3,4,0\n",
            r"line 1: column\(s\) coordX appear more than once",
        ),
        (b"seriesuid,coordX,coordY,coordZ,class\n", r"no candidate rows after the header"),
    ],
)
def test_a_csv_that_cannot_be_read_is_named_with_its_line(phantom_copy, content, message):
    (phantom_copy / "candidates.csv").write_bytes(content)
    with pytest.raises(CsvFormatError, match=rf"candidates\.csv(, | ?:).*{message}"):
        load_candidate_arrays(phantom_copy / "annotations.csv", phantom_copy / "candidates.csv")


# ------------------------------------------------------------------ runs, caches and outputs


def test_two_runs_started_together_never_share_a_run_folder(tmp_path):
    versions, start = [], threading.Barrier(8)

    def claim() -> None:
        start.wait()
        versions.append(claim_version(tmp_path / "logs"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(8))


@pytest.mark.e2e
def test_two_commands_with_one_root_write_two_runs(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "luna.fit", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()[-2000:]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["version_0", "version_1"]
    for folder in folders:
        assert (tmp_path / "runs" / folder / "metrics.csv").is_file()
        assert (tmp_path / "runs" / folder / "checkpoints" / "last.ckpt").is_file()


def test_an_incomplete_cache_on_read_only_storage_is_one_error(phantom_dir, tmp_path, monkeypatch):
    import luna.io.files as files

    real = files.tempfile.TemporaryFile

    def read_only(
        *args, dir=None, **kwargs
    ):  # root ignores permissions: refuse writes as a read-only mount does
        if dir is not None and "luna-" in str(dir):
            raise PermissionError(13, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    source = Luna16Candidates(phantom_dir)
    (cache_path(tmp_path, source, SETTINGS) / "images").mkdir(parents=True)  # a build that stopped early
    monkeypatch.setattr(files.tempfile, "TemporaryFile", read_only)
    with pytest.raises(
        CacheBuildError, match=r"cache folder .*luna-\w+ is not writable: Read-only file system"
    ):
        build_cache(source, tmp_path, SETTINGS)


@pytest.fixture(scope="module")
def trained(phantom_dir, cache_root, tmp_path_factory):
    """A tiny run's config and last checkpoint."""
    from luna.cli.fit import main

    folder = tmp_path_factory.mktemp("trained")
    config = tiny_config(folder / "tiny.yaml", phantom_dir, cache_root, folder / "runs")
    main(["--config", str(config)])
    return config, folder / "runs" / "version_0" / "checkpoints" / "last.ckpt"


class Untrusted:
    """Anything but tensors: torch refuses to unpickle it with weights_only=True."""


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", r"checkpoint .*bad\.ckpt is damaged or not a torch checkpoint"),
        ("empty", r"checkpoint .*bad\.ckpt is empty \(0 bytes\)"),
        ("untrusted", r"bad\.ckpt holds pickled objects that torch does not load safely"),
        (
            "other classes",
            r"checkpoint .*bad\.ckpt was trained for 3 classes, but the data \(non-nodule, nodule\) has 2",
        ),
        ("missing", r"checkpoint .*bad\.ckpt does not exist"),
    ],
)
def test_a_checkpoint_that_cannot_be_used_is_one_line(
    trained, tmp_path, capsys, monkeypatch, damage, message
):
    config, checkpoint = trained
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:5000])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "untrusted":
        torch.save({"state_dict": {}, "extra": Untrusted()}, bad)
    elif damage == "other classes":
        saved = torch.load(checkpoint, weights_only=False)
        saved["hyper_parameters"]["num_classes"] = 3
        torch.save(saved, bad)
    code, stderr = run_cli(["validate", "--config", str(config), f"--ckpt_path={bad}"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in stderr
    assert __import__("re").search(message, last_error_line(stderr)), stderr[-1000:]


def test_predict_onto_a_folder_or_an_unwritable_place_fails_before_predicting(
    trained, tmp_path, capsys, monkeypatch
):
    config, checkpoint = trained
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target, reason in ((folder, "is a folder"), (blocker / "out.csv", "is a file, not a folder")):
        code, stderr = run_cli(
            ["predict", "--config", str(config), f"--ckpt_path={checkpoint}", f"--predictions.path={target}"],
            capsys,
            monkeypatch,
        )
        assert code == 2 and reason in last_error_line(stderr), stderr[-1000:]
        assert last_error_line(stderr).startswith(
            f"error: predictions.path={target}: cannot write the predictions"
        )
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tmp"))


def test_evaluate_onto_an_unwritable_place_fails_before_scoring(phantom_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, stderr = run_cli(
        [
            str(write_empty_predictions(tmp_path)),
            "--data_dir",
            str(phantom_dir),
            "--output",
            str(blocker / "out"),
        ],
        capsys,
        monkeypatch,
        evaluate_cli,
    )
    assert code == 2 and "cannot write froc.json and froc.png there" in stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model.network=some.Missing"],
            r"^error: --model\.network: Problem with given class_path 'some\.Missing': "
            r"No module named 'some'$",
        ),
        (
            ["--trainer.logger.init_args.save_dir=/tmp/x"],
            r"^error: --trainer\.logger: luna makes the loggers itself",
        ),
        (
            ["--trainer.max_epoch=2"],
            r"^error: --trainer\.max_epoch is not an option: did you mean --trainer\.max_epochs",
        ),
        (["--data.val_subset=3"], r"^error: --data\.val_subset was renamed --data\.val_fold in luna 0\.2$"),
        (
            ["--data.split_by=series"],
            r"^error: --data\.split_by: .*\(split_by=series is called group since luna 0\.2\)$",
        ),
    ],
)
def test_command_line_mistakes_are_one_line(trained, capsys, monkeypatch, args, message):
    config, _ = trained
    code, stderr = run_cli(["--config", str(config), *args], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in stderr
    assert __import__("re").search(message, last_error_line(stderr)), stderr[-1000:]


def test_a_run_without_a_logger_trains(trained, tmp_path):
    from luna.cli.fit import main

    config, _ = trained
    cli_run = main(
        ["--config", str(config), "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    )
    assert cli_run.trainer.global_step == 2 and not cli_run.trainer.loggers


def test_wandb_online_without_a_key_is_one_line(trained, capsys, monkeypatch, tmp_path):
    config, _ = trained
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    code, stderr = run_cli(
        ["--config", str(config), "--loggers=[csv, wandb]", f"--trainer.default_root_dir={tmp_path}"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "Traceback" not in stderr
    assert last_error_line(stderr).startswith(
        "error: WANDB_MODE=online but no W&B API key for api.wandb.ai: run `wandb login`"
    )


def test_a_failed_fit_leaves_no_empty_run_folder(phantom_copy, tmp_path, capsys, monkeypatch):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_copy, tmp_path / "cache", tmp_path / "runs")
    scan = sorted(phantom_copy.glob("subset*/*.raw"))[0]
    scan.write_bytes(scan.read_bytes()[:1000])  # a truncated scan stops the cache build, before training
    code, stderr = run_cli(["--config", str(config)], capsys, monkeypatch)
    assert code == 2 and "cannot read scan" in last_error_line(stderr)
    assert not list((tmp_path / "runs").glob("version_*"))  # the next run is version_0, as the README says


def test_validate_of_a_checkpoint_in_a_read_only_run_writes_under_default_root_dir(
    trained, tmp_path, caplog, monkeypatch
):
    from luna.cli import trainer_options
    from luna.cli.fit import main

    config, checkpoint = trained
    run = checkpoint.parent.parent
    real = trainer_options.writable_problem
    monkeypatch.setattr(
        trainer_options,
        "writable_problem",  # root ignores permissions: refuse as a read-only mount
        lambda folder: "read-only file system" if Path(folder) == run else real(folder),
    )
    with caplog.at_level(logging.WARNING):
        main(
            [
                "validate",
                "--config",
                str(config),
                f"--ckpt_path={checkpoint}",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert "the checkpoint's run folder cannot take this validate (read-only file system)" in caplog.text
    assert (tmp_path / "version_0" / "metrics.csv").is_file() and not (run / "validate").exists()
