"""The PTQ cost benchmark runs and writes its table (timings themselves are not asserted)."""

import json

from yolo_w4.ptq_cost import SYNTHESIS_STEPS, main
from yolo_w4.torch_device import resolve_torch_device


def test_ptq_cost_benchmark_writes_a_row_per_method(tmp_path):
    out = tmp_path / "cost.json"
    main([
        "--arch", "yolov10n.yaml", "--images", "1", "--methods", "gptq", "gptq_up", "synthesis", "--imgsz", "64",
        "--synthesis-steps", "2", "--out", str(out),
    ])  # fmt: skip
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert [row["method"] for row in rows] == ["gptq", "gptq_up", "synthesis"]
    device = resolve_torch_device("auto")  # the default --device
    assert record["device"] == device and all(row["device"] == device for row in rows)
    ptq, synthesis = rows[:2], rows[2]
    assert all(
        row["convs"] > 50 and row["seconds"] > 0 and row["seconds_128_images_bound"] >= row["seconds"] for row in ptq
    )
    extrapolated = synthesis[f"seconds_{SYNTHESIS_STEPS}_steps"]  # the config's default steps, as the workflow runs
    assert synthesis["steps"] == 2 and extrapolated >= 0.45 * SYNTHESIS_STEPS * synthesis["seconds"] > 0


def test_ptq_cost_refuses_cuda_it_cannot_see(tmp_path):
    import pytest
    import torch

    from yolo_w4.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("PyTorch sees a CUDA device here")
    with pytest.raises(UserError, match="PyTorch sees no CUDA device"):
        main(["--arch", "yolov10n.yaml", "--device", "cuda", "--out", str(tmp_path / "cost.json")])
    assert not (tmp_path / "cost.json").exists()
