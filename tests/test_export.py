"""``python -m luna.export`` and ``python -m luna.infer``: a trained model as a bundle, run on new
volumes without the training stack, giving ``luna.fit predict``'s probabilities."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from luna.cli.fit import main as fit
from luna.cli.infer import cli as infer_cli
from luna.cli.infer import main as infer
from luna.inference.bundle import BundleError, read_bundle
from luna.inference.export import export_bundle
from tests.helpers import last_error_line, run_cli, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def predicted_and_inferred(config: Path, checkpoint: Path, data_dir: Path, tmp_path: Path, *extra: str):
    """``luna.fit predict`` of a checkpoint, and ``luna.infer`` of its bundle on the same points."""
    predictions = tmp_path / "predictions.csv"
    fit(
        [
            "predict",
            "--config",
            str(config),
            f"--ckpt_path={checkpoint}",
            f"--predictions.path={predictions}",
            *extra,
        ]
    )
    predicted = rows_of(predictions)
    scans = {path.stem: path for path in data_dir.glob("subset*/*.mhd")}
    points = tmp_path / "points.csv"
    with points.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "coordX", "coordY", "coordZ"])
        writer.writerows(
            [str(scans[row["seriesuid"]]), row["coordX"], row["coordY"], row["coordZ"]] for row in predicted
        )
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    assert infer([str(bundle), "--points", str(points), "--output", str(tmp_path / "inferred.csv")]) == 0
    return predicted, rows_of(tmp_path / "inferred.csv"), bundle


def assert_equal_probabilities(predicted: list[dict], inferred: list[dict]) -> None:
    assert len(predicted) == len(inferred) > 5
    for before, after in zip(predicted, inferred, strict=True):
        assert [float(before[c]) for c in ("coordX", "coordY", "coordZ")] == [
            float(after[c]) for c in ("coordX", "coordY", "coordZ")
        ]
        assert float(after["probability"]) == pytest.approx(float(before["probability"]), abs=1e-5)


def test_the_bundle_of_lunamodel_gives_predicts_probabilities(classifier_run, phantom_dir, tmp_path):
    config, checkpoint = classifier_run
    predicted, inferred, bundle = predicted_and_inferred(config, checkpoint, phantom_dir, tmp_path)
    assert_equal_probabilities(predicted, inferred)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["luna"]["views"] == [{"width_irc": [32, 48, 48], "spacing_mm": None}]
    assert metadata["luna"]["torchscript"] == "traced" and metadata["luna"]["class_names"] == [
        "non-nodule",
        "nodule",
    ]
    assert (bundle / "models" / "model.ts").is_file() and (bundle / "configs" / "training.yaml").is_file()


def test_the_bundle_of_a_multi_view_model_in_millimetres(phantom_dir, tmp_path):
    config = tiny_config(
        tmp_path / "tiny.yaml",
        phantom_dir,
        tmp_path / "cache",
        tmp_path / "runs",
        width_irc=[16, 16, 16],
        spacing_mm=[1.5, 1.5, 1.5],
        extra_views=[{"width_irc": [16, 32, 32], "spacing_mm": [2.0, 1.0, 1.0]}],
    )
    fit(["--config", str(config)])
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    predicted, inferred, _ = predicted_and_inferred(config, checkpoint, phantom_dir, tmp_path)
    assert_equal_probabilities(predicted, inferred)


def test_the_bundle_of_a_monai_network(phantom_dir, cache_root, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    network = [
        "--model.network=monai.networks.nets.DenseNet",
        "--model.network.spatial_dims=3",
        "--model.network.in_channels=1",
        "--model.network.out_channels=2",
        "--model.network.init_features=4",
        "--model.network.growth_rate=4",
        "--model.network.block_config=[2]",
        "--model.channels_last=false",
    ]
    fit(["--config", str(config), *network])
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    predicted, inferred, _ = predicted_and_inferred(config, checkpoint, phantom_dir, tmp_path, *network)
    assert_equal_probabilities(predicted, inferred)


class Untraceable(nn.Module):
    """A network whose output hangs on a value read into Python: tracing freezes that branch (its
    outputs differ on other inputs), scripting refuses numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        level = float(np.mean(crops.detach().cpu().numpy()))
        features = crops.mean(dim=(1, 2, 3, 4))[:, None]
        return self.linear(features if level > 0 else -features)


def test_a_network_that_neither_traces_nor_scripts_exports_its_weights_and_says_which(
    phantom_dir, cache_root, tmp_path, capsys, monkeypatch
):
    config = tiny_config(tmp_path / "tiny.yaml", phantom_dir, cache_root, tmp_path / "runs")
    fit(["--config", str(config), f"--model.network={__name__}.Untraceable", "--model.channels_last=false"])
    bundle = export_bundle(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", tmp_path / "bundle")
    luna = json.loads((bundle / "configs" / "metadata.json").read_text())["luna"]
    assert "not traced" in luna["torchscript"] and "not scripted" in luna["torchscript"]
    assert (bundle / "models" / "model.pt").is_file() and not (bundle / "models" / "model.ts").exists()
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    code, stderr = run_cli([str(bundle), "--point", str(scan), "0", "0", "0"], capsys, monkeypatch, infer_cli)
    assert code == 2 and "holds no TorchScript network (not traced" in last_error_line(stderr)


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_a_damaged_bundle_is_refused_naming_the_file(classifier_run, tmp_path, damage, capsys, monkeypatch):
    _, checkpoint = classifier_run
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    model = bundle / "models" / "model.ts"
    if damage == "altered":
        model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    else:
        model.unlink()
    with pytest.raises(
        BundleError, match=f"models/model.ts {'was altered' if damage == 'altered' else 'is missing'}"
    ):
        read_bundle(bundle)
    code, stderr = run_cli(
        [str(bundle), "--point", "x.nii.gz", "0", "0", "0"], capsys, monkeypatch, infer_cli
    )
    assert code == 2 and "models/model.ts" in last_error_line(stderr) and "Traceback" not in stderr


def test_a_point_outside_its_volume_is_named_and_the_others_go_on(
    classifier_run, phantom_dir, tmp_path, caplog
):
    _, checkpoint = classifier_run
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    candidates = rows_of(phantom_dir / "candidates.csv")
    scans = {path.stem: path for path in phantom_dir.glob("subset*/*.mhd")}
    inside = next(row for row in candidates if row["seriesuid"] in scans)
    points = tmp_path / "points.csv"
    points.write_text(
        "image,coordX,coordY,coordZ\n"
        f"{scans[inside['seriesuid']]},{inside['coordX']},{inside['coordY']},{inside['coordZ']}\n"
        f"{scans[inside['seriesuid']]},9999,9999,9999\n"
    )
    assert infer([str(bundle), "--points", str(points), "--output", str(tmp_path / "out.csv")]) == 1
    assert "points.csv, line 3: the point [9999.0, 9999.0, 9999.0] mm lies outside" in caplog.text
    assert len(rows_of(tmp_path / "out.csv")) == 1


def test_a_volume_of_other_intensities_gets_a_warning(classifier_run, phantom_dir, tmp_path, caplog):
    import SimpleITK as sitk

    _, checkpoint = classifier_run
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    image = sitk.ReadImage(str(scan))
    mri = sitk.Cast(image + 3000, sitk.sitkInt16) * 2  # MRI-like magnitudes: nothing near CT's air
    sitk.WriteImage(mri, str(tmp_path / "mri.nii.gz"))
    center = image.TransformIndexToPhysicalPoint([s // 2 for s in image.GetSize()])
    assert (
        infer(
            [
                str(bundle),
                "--point",
                str(tmp_path / "mri.nii.gz"),
                *map(str, center),
                "--output",
                str(tmp_path / "out.csv"),
            ]
        )
        == 0
    )
    assert "lie at or above the top of the bundle's intensity window [-1000, 1000]" in caplog.text


def test_monai_reads_the_bundle_and_builds_its_predictor(classifier_run, tmp_path):
    from monai.bundle import ConfigParser

    _, checkpoint = classifier_run
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network")
    predictor = parser.get_parsed_content("predictor")
    assert isinstance(network, torch.jit.ScriptModule) and predictor.info.class_names == [
        "non-nodule",
        "nodule",
    ]
    assert parser["_meta_"]["network_data_format"]["inputs"]["view0"]["spatial_shape"] == [32, 48, 48]


def test_infer_imports_neither_lightning_nor_the_crop_cache(classifier_run, phantom_dir, tmp_path):
    _, checkpoint = classifier_run
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    code = (
        "import sys; from luna.cli.infer import main; "
        f"status = main([{str(bundle)!r}, '--point', {str(scan)!r}, '0', '0', '0', '--output', "
        f"{str(tmp_path / 'out.csv')!r}]); "
        "loaded = [name for name in sys.modules if name.split('.')[0] in ('pytorch_lightning', 'lightning') "
        "or name.startswith('luna.data.cache')]; print(status, loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_segmentation_and_classifier_bundles_find_what_luna_detect_finds(
    checkpoints_for_scans, phantom_dir, tmp_path
):
    from luna.cli.detect import main as detect

    segmentation, classifier = checkpoints_for_scans
    scan = sorted(phantom_dir.glob("subset*/*.mhd"))[0]
    assert (
        detect(
            [
                "--scans",
                str(scan),
                "--segmentation",
                str(segmentation),
                "--classifier",
                str(classifier),
                "--output",
                str(tmp_path / "detect"),
                "--threshold",
                "0.3",
                "--max_candidates",
                "6",
            ]
        )
        == 0
    )
    seg_bundle = export_bundle(segmentation, tmp_path / "seg_bundle", threshold=0.3)
    cls_bundle = export_bundle(classifier, tmp_path / "cls_bundle")
    assert (
        infer(
            [
                str(cls_bundle),
                "--segmentation",
                str(seg_bundle),
                "--scans",
                str(scan),
                "--output",
                str(tmp_path / "infer.csv"),
                "--max_candidates",
                "6",
            ]
        )
        == 0
    )
    detected, inferred = rows_of(tmp_path / "detect" / "detections.csv"), rows_of(tmp_path / "infer.csv")
    assert len(detected) == len(inferred)
    for a, b in zip(detected, inferred, strict=True):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)


@pytest.fixture(scope="module")
def checkpoints_for_scans(segmentation_run, classifier_run):
    return segmentation_run[1] / "checkpoints" / "last.ckpt", classifier_run[1]
