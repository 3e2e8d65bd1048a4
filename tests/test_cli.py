"""`python -m yolo_w4`: the same steps outside Snakemake, with one-line errors."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import VAL_ANNOTATIONS, VAL_IMAGES, shared
from test_workflow import TRAIN_ANNOTATIONS, TRAIN_IMAGES


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "yolo_w4", *args], cwd=cwd, capture_output=True, text=True, env=None)


def test_cli_quantize_export_smoke(seeded_checkpoint, tmp_path):
    ckpt = str(seeded_checkpoint)
    steps = [
        ("quantize", "--checkpoint", ckpt, "--out", "w4.pt", "--variant", "w4a16_rtn", "--scale", "mse"),
        ("export", "--checkpoint", ckpt, "--quantized", "w4.pt", "--out", "w4.onnx"),
        ("pack", "--onnx", "w4.onnx", "--out", "w4-int4.onnx"),
        (
            "smoke",
            "--checkpoint",
            ckpt,
            "--quantized",
            "w4.pt",
            "--onnx",
            "w4.onnx",
            "--device",
            "cpu",
            "--runs",
            "2",
            "--out",
            "smoke.json",
        ),
    ]
    for step in steps:
        result = cli(*step, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    smoke = json.loads((tmp_path / "smoke.json").read_text())
    assert smoke["variant"] == "w4a16_rtn" and smoke["parity"]["sqnr_db"] >= 80
    export = json.loads((tmp_path / "w4.json").read_text())
    assert export["settings"]["scale"] == "mse"
    packed = json.loads((tmp_path / "w4-int4.json").read_text())
    assert packed["layers_packed"] == len(export["weight_clips"]) and packed["parity_vs_qcdq"]["max_abs_diff"] == 0.0
    result = cli("pack", "--onnx", "w4-int4.onnx", "--out", "again.onnx", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: w4-int4.onnx is already INT4-packed")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "again.onnx").exists()


def small_config(tmp_path, **calibration) -> str:
    """A config laid over config/config.yaml: tiny distillation (and calibration) for a seeded model."""
    path = tmp_path / "small.yaml"
    path.write_text(
        yaml.safe_dump({"calibration": {"synthetic": {"images": 2, "imgsz": 64, "steps": 2}, **calibration}})
    )
    return str(path)


def test_cli_quantize_builds_the_workflows_default_recipe(seeded_checkpoint, tmp_path):
    """No recipe flag: the config's first `build` entry (w4a16, GPTQ on `auto` calibration). The config's
    COCO folder is absent here, so there is no spare photo: images are distilled in the run."""
    import torch

    from yolo_w4.config import load_config, recipe_settings

    ckpt = str(seeded_checkpoint)
    config = small_config(tmp_path)
    result = cli("quantize", "--checkpoint", ckpt, "--config", config, "--imgsz", "64", "--out", "w4.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = torch.load(tmp_path / "w4.pt", weights_only=True)
    expected = {**recipe_settings(load_config(), "w4a16"), "calibration_source": "synthetic"}  # auto, resolved
    assert saved["variant"] == "w4a16"
    assert {key: saved["settings"][key] for key in expected} == expected
    assert saved["settings"]["calibration_source_reason"].startswith("auto: distilled images, since ")
    assert saved["settings"]["calibration_image_count"] == 2
    assert any(layer["weights_changed"] for layer in saved["calibration"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.yaml", "w4.pt"], "the distilled images were temporary"


def test_cli_reuses_distilled_images_and_calibrates_on_real_ones(seeded_checkpoint, tmp_path):
    import torch

    ckpt = str(seeded_checkpoint)
    config = small_config(tmp_path, max_images=2)
    coco = tmp_path / "coco.yaml"  # the user's layout: a COCO folder, nothing said of calibration
    coco.write_text(
        yaml.safe_dump(
            {
                "coco": {
                    "images": str(shared(*VAL_IMAGES)),
                    "annotations": str(shared(*VAL_ANNOTATIONS)),
                    "max_images": 3,
                },
                "calibration": {"max_images": 2},
            }
        )
    )
    steps = [
        ("synthesize", "--checkpoint", ckpt, "--config", config, "--device", "cpu", "--out", "synthetic.pt"),
        ("quantize", "--checkpoint", ckpt, "--config", config, "--imgsz", "64", "--synthetic", "synthetic.pt",
         "--out", "w4.pt"),
        ("quantize", "--checkpoint", ckpt, "--config", config, "--imgsz", "64", "--variant", "w4a16_g32",
         "--calibration-images", str(shared(*TRAIN_IMAGES)), "--calibration-annotations",
         str(shared(*TRAIN_ANNOTATIONS)), "--out", "real.pt"),
        ("quantize", "--checkpoint", ckpt, "--config", coco, "--imgsz", "64", "--out", "own.pt"),
    ]  # fmt: skip
    for step in steps:
        result = cli(*step, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    saved = torch.load(tmp_path / "w4.pt", weights_only=True)
    assert saved["settings"]["synthetic_images_sha256"] and saved["settings"]["calibration_image_count"] == 2
    real = torch.load(tmp_path / "real.pt", weights_only=True)
    assert real["variant"] == "w4a16_g32" and real["settings"]["compensate_upstream"] is True
    assert real["settings"]["calibration_source"] == "images" and real["settings"]["calibration_image_count"] == 2
    own = torch.load(tmp_path / "own.pt", weights_only=True)["settings"]
    val_ids = sorted(image["id"] for image in json.loads(shared(*VAL_ANNOTATIONS).read_text())["images"])
    assert own["calibration_source"] == "images" and own["calibration_source_reason"].startswith(
        "auto: real photos, since "
    )
    assert own["calibration_photos"]["ids"] == val_ids[3:5], "the val photos after the 3-image evaluation subset"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--variant", "w5"], "error: --variant w5 is not a recipe in "),
        (
            ["--method", "gptq", "--asymmetric"],
            "error: invalid config at variants.w4a16: method gptq with symmetric: false needs group_size",
        ),
        (["--bits", "1"], "error: invalid config at variants.w4a16.weight_bits: 1 is less than the minimum of 2"),
        (
            ["--variant", "w4a16_mixed_up", "--calibration-images", "nowhere", "--calibration-annotations", "x.json"],
            "error: w4a16_mixed_up calibrates on real images, but nowhere is not there: pass --calibration-images",
        ),
    ],
)
def test_cli_recipe_errors_are_one_line(seeded_checkpoint, tmp_path, flags, message):
    result = cli("quantize", "--checkpoint", str(seeded_checkpoint), "--out", "w4.pt", *flags, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert not (tmp_path / "w4.pt").exists()


def test_cli_head_that_contradicts_the_quantized_file_is_one_line(seeded_checkpoint, tmp_path):
    ckpt = str(seeded_checkpoint)
    assert (
        cli("quantize", "--checkpoint", ckpt, "--out", "w4.pt", "--variant", "w4a16_rtn", cwd=tmp_path).returncode == 0
    )
    result = cli(
        "export", "--checkpoint", ckpt, "--quantized", "w4.pt", "--head", "one2many", "--out", "w4.onnx", cwd=tmp_path
    )
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: w4.pt was quantized with head one2one, so head one2many cannot be exported from it; "
        "re-quantize with head one2many, or leave the head to the quantized file"
    ]
    assert not (tmp_path / "w4.onnx").exists()
    assert cli("export", "--checkpoint", ckpt, "--quantized", "w4.pt", "--out", "w4.onnx", cwd=tmp_path).returncode == 0
