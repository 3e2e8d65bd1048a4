"""ONNX Runtime provider choice: a real probe decides CUDA and FP16, and says why not.

These machines have no GPU and the CPU build of onnxruntime, so the CUDA side is proved by
`make gpu-check` on a GPU machine (README "GPU"); here: the fallbacks and their reasons.
"""

import subprocess
import sys

import onnxruntime
import pytest

from yolo_w4.errors import UserError
from yolo_w4.runtime import CPU, CUDA, create_session, probe_providers, resolve_precision

NO_CUDA = CUDA not in onnxruntime.get_available_providers()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this onnxruntime has a CUDA provider")


@needs_no_cuda
def test_auto_without_cuda_records_cpu_and_the_reason():
    probe = probe_providers("auto")
    assert probe["provider_used"] == CPU
    assert (
        probe["cuda_reason"] == f"onnxruntime {onnxruntime.__version__} has no CUDA provider (install onnxruntime-gpu)"
    )
    assert probe["preload_dlls"] is None, "preload_dlls is only called where a CUDA provider exists"
    assert resolve_precision("auto", "auto") == "fp32"


def test_cpu_is_never_probed_for_cuda():
    probe = probe_providers("cpu")
    assert probe["provider_used"] == CPU and probe["cuda_reason"] == "device: cpu" and probe["preload_dlls"] is None


def test_precision_follows_the_probe_not_the_compiled_in_list():
    compiled_in = {"providers_compiled_in": [CUDA, CPU]}
    assert resolve_precision("auto", "auto", {**compiled_in, "provider_used": CPU}) == "fp32"
    assert resolve_precision("auto", "auto", {**compiled_in, "provider_used": CUDA}) == "fp16"
    assert resolve_precision("fp16", "cpu") == "fp16", "an explicit precision is kept"
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(UserError, match="precision must be auto, fp32 or fp16"):
        resolve_precision("int8", "auto")


@needs_no_cuda
def test_device_cuda_stops_with_one_line_naming_the_missing_piece(w4_onnx_path):
    with pytest.raises(UserError) as raised:
        create_session(w4_onnx_path, "cuda")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("device: cuda, but ONNX Runtime cannot use CUDA here: onnxruntime ")
    assert "has no CUDA provider (install onnxruntime-gpu)" in message


@needs_no_cuda
def test_auto_session_falls_back_to_cpu_and_says_why(w4_onnx_path):
    _, record = create_session(w4_onnx_path, "auto")
    assert record["providers_requested"] == [CUDA, CPU]
    assert record["provider_used"] == CPU and "no CUDA provider" in record["cuda_reason"]
    assert record["disable_quant_qdq"] is True


@pytest.fixture(scope="module")
def w4_onnx_path(detector, tmp_path_factory):
    from yolo_w4.export import export_fp

    path = tmp_path_factory.mktemp("runtime") / "fp.onnx"
    export_fp(detector.model, path, 320)
    return path


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: make gpu-check measures it")
    done = subprocess.run(
        [sys.executable, "-m", "yolo_w4.gpu_check", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU visible to PyTorch"), done.stdout
    assert not any(tmp_path.iterdir()) or not (tmp_path / "gpu_check.json").exists()
