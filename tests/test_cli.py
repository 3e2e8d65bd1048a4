"""`python -m yolo_w4`: the same steps outside Snakemake, with one-line errors."""

import json
import subprocess
import sys


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "yolo_w4", *args], cwd=cwd, capture_output=True, text=True, env=None)


def test_cli_quantize_export_smoke(seeded_checkpoint, tmp_path):
    ckpt = str(seeded_checkpoint)
    steps = [
        ("quantize", "--checkpoint", ckpt, "--out", "w4.pt", "--scale", "mse"),
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
    assert smoke["variant"] == "w4a16" and smoke["parity"]["sqnr_db"] >= 80
    export = json.loads((tmp_path / "w4.json").read_text())
    assert export["settings"]["scale"] == "mse"
    packed = json.loads((tmp_path / "w4-int4.json").read_text())
    assert packed["layers_packed"] == len(export["weight_clips"]) and packed["parity_vs_qcdq"]["max_abs_diff"] == 0.0
    result = cli("pack", "--onnx", "w4-int4.onnx", "--out", "again.onnx", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: w4-int4.onnx is already INT4-packed")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "again.onnx").exists()


def test_cli_data_free_gptq_on_synthesized_images(seeded_checkpoint, tmp_path):
    import torch

    ckpt = str(seeded_checkpoint)
    result = cli("quantize", "--checkpoint", ckpt, "--out", "w4.pt", "--method", "gptq", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --method gptq needs calibration images: pass --synthetic FILE (from `synthesize`)"
    ]
    steps = [
        (
            "synthesize",
            "--checkpoint",
            ckpt,
            "--imgsz",
            "64",
            "--images",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            "synthetic.pt",
        ),
        (
            "quantize",
            "--checkpoint",
            ckpt,
            "--imgsz",
            "64",
            "--method",
            "gptq",
            "--scale",
            "mse",
            "--synthetic",
            "synthetic.pt",
            "--out",
            "w4.pt",
        ),
    ]
    for step in steps:
        result = cli(*step, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    saved = torch.load(tmp_path / "w4.pt", weights_only=True)
    assert saved["settings"]["calibration_source"] == "synthetic" and saved["settings"]["calibration_images"] == 2
    assert any(layer["weights_changed"] for layer in saved["calibration"].values())


def test_cli_head_that_contradicts_the_quantized_file_is_one_line(seeded_checkpoint, tmp_path):
    ckpt = str(seeded_checkpoint)
    assert cli("quantize", "--checkpoint", ckpt, "--out", "w4.pt", cwd=tmp_path).returncode == 0
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
