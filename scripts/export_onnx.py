"""Rules export_fp and export_qcdq: PyTorch model -> ONNX (+ a JSON describing the graph)."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_torch import export_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    export_step,
    checkpoint=sm.input.checkpoint,
    quantized=sm.input.get("quantized"),
    output=sm.output.onnx,
    record_path=sm.output.record,
    precision=sm.params.precision,
    head=sm.params.head,
    imgsz=sm.params.imgsz,
    config=sm.config,
    trust=sm.config["trust_checkpoint"],
)
