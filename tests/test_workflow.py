"""The Snakemake workflow end to end on a small config, its lint, and its bad-input errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, VAL_IMAGES, shared

pytestmark = pytest.mark.workflow
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--cores", "1"]


def snakemake(*args, config: dict | None = None, tmp_path: Path | None = None):
    command = [*SNAKEMAKE, *args]
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        command += ["--configfile", str(path)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real run: seeded YOLOv10n, a real COCO photo, the default w4a16 plus a w8a16 variant."""
    tmp_path = tmp_path_factory.mktemp("workflow")
    run_id = "pytest-workflow"
    shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)
    photo = sorted(shared(*VAL_IMAGES).glob("*.jpg"))[0]
    config = {
        "run_id": run_id,
        "checkpoint": "results/seeded/yolov10n-seed0.pt",
        "smoke": {"image": str(photo), "runs": 3, "warmup": 1},
        "variants": {"w8a16": {"weight_bits": 8}},
    }
    result = snakemake(config=config, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    yield ROOT / "results" / run_id, config, tmp_path
    shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)


def test_run_writes_every_artifact(run):
    results, _, _ = run
    model = "yolov10n-seed0"
    for variant in ("w4a16", "w8a16"):
        assert (results / "quantized" / f"{model}-{variant}-ptq.pt").is_file()
        assert (results / "onnx" / f"{model}-{variant}-qcdq-ptq.onnx").is_file()
        assert (results / "logs" / "quantize_weights" / f"{model}-{variant}.log").is_file()
        assert (results / "benchmarks" / "quantize_weights" / f"{model}-{variant}.tsv").is_file()
    assert (results / "onnx" / f"{model}-fp32.onnx").is_file()
    assert sorted(p.name for p in (results / "smoke").iterdir()) == [
        f"{model}-fp.json",
        f"{model}-w4a16.json",
        f"{model}-w8a16.json",
    ]


def test_export_records_clip_ranges_and_node_counts(run):
    results, _, _ = run
    w4 = json.loads((results / "onnx" / "yolov10n-seed0-w4a16-qcdq-ptq.json").read_text())
    w8 = json.loads((results / "onnx" / "yolov10n-seed0-w8a16-qcdq-ptq.json").read_text())
    assert w4["weight_clip_ranges"] == [[-7, 7]] and w8["weight_clip_ranges"] == [[-127, 127]]
    assert w4["node_counts"]["DequantizeLinear"] == w4["node_counts"]["Clip"] == w4["node_counts"]["Conv"] - 1
    assert w4["inputs"]["checkpoint"]["sha256"] == w4["checkpoint"]["sha256"]
    assert w4["config"]["variants"]["w4a16"]["weight_bits"] == 4


def test_smoke_json_says_what_ran_and_how_close_it_is(run):
    results, config, _ = run
    for variant in ("fp", "w4a16"):
        smoke = json.loads((results / "smoke" / f"yolov10n-seed0-{variant}.json").read_text())
        assert smoke["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert smoke["provider_used"] == "CPUExecutionProvider" == smoke["providers_used"][0]
        assert smoke["precision"] == "fp32"
        assert smoke["model_io"]["inputs"][0] == {"name": "images", "shape": [1, 3, 640, 640], "type": "tensor(float)"}
        assert smoke["model_io"]["outputs"][0]["shape"] == [1, 300, 6]
        assert smoke["latency"]["runs"] == 3 and 0 < smoke["latency"]["median_ms"] <= smoke["latency"]["p90_ms"]
        assert smoke["parity"]["sqnr_db"] >= 80, smoke["parity"]
        assert smoke["detections"]["image"] == config["smoke"]["image"]
        assert smoke["inputs"]["image"]["sha256"] and smoke["checkpoint"]["random_weights"] is True
        assert smoke["versions"]["brevitas"] == "0.13.4"


def test_second_run_has_nothing_to_do(run):
    _, config, tmp_path = run
    result = snakemake("-n", config=config, tmp_path=tmp_path)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint", "--configfile", "config/demo.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"colour": "red"}, "error: invalid config at (top level): unknown key: "),
        ({"imgsz": 100}, "error: invalid config at imgsz: 100 is not a multiple of 32"),
        ({"device": "gpu"}, "error: invalid config at device: 'gpu' is not one of"),
        ({"variants": {"w3": {"weight_bits": 1}}}, "error: invalid config at variants.w3.weight_bits: 1 is less than"),
        ({"variants": {"fp": {}}}, "error: invalid config at variants: 'fp' should not be valid"),
        ({"checkpoint": "models/none.pt"}, "error: checkpoint not found: models/none.pt"),
    ],
)
def test_bad_config_fails_before_any_job_with_one_line(tmp_path, override, message):
    config = {"run_id": "pytest-bad-config", "checkpoint": "results/seeded/yolov10n-seed0.pt", **override}
    result = snakemake(config=config, tmp_path=tmp_path)
    assert result.returncode != 0
    assert error_lines(result) == [error_lines(result)[0]] and error_lines(result)[0].startswith(message), result.stderr
    assert not (ROOT / "results" / "pytest-bad-config").exists()


def test_file_that_is_not_a_checkpoint_fails_cleanly(tmp_path):
    bad = tmp_path / "yolov10m.pt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a checkpoint")
    run_id = "pytest-bad-checkpoint"
    result = snakemake(config={"run_id": run_id, "checkpoint": str(bad)}, tmp_path=tmp_path)
    try:
        assert result.returncode != 0
        lines = error_lines(result)
        assert lines and f"{bad} is not a PyTorch checkpoint" in lines[0], result.stderr
        outputs = [p for p in (ROOT / "results" / run_id).rglob("*") if ".ultralytics" not in p.parts]
        artifacts = [p for p in outputs if p.suffix in (".pt", ".onnx", ".json")]
        assert artifacts == []
    finally:
        shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)
