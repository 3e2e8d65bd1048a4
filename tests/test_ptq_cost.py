"""The PTQ cost benchmark runs and writes its table (timings themselves are not asserted)."""

import json

from yolo_w4.ptq_cost import main


def test_ptq_cost_benchmark_writes_a_row_per_method(tmp_path):
    out = tmp_path / "cost.json"
    main([
        "--arch", "yolov10n.yaml", "--images", "1", "--methods", "gptq", "gptq_up", "synthesis", "--imgsz", "64",
        "--synthesis-steps", "2", "--out", str(out),
    ])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["gptq", "gptq_up", "synthesis"]
    ptq, synthesis = rows[:2], rows[2]
    assert all(row["convs"] > 50 and row["seconds"] > 0 and row["seconds_128_images_bound"] >= row["seconds"] for row in ptq)
    assert synthesis["steps"] == 2 and synthesis["seconds_200_steps"] >= 90 * synthesis["seconds"] > 0
