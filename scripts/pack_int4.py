"""Rule pack_int4: QCDQ ONNX -> the same model with INT4 weights (+ a JSON with sizes and parity)."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import pack_step

sm = snakemake  # noqa: F821
run_rule(sm, pack_step, qcdq=sm.input.onnx, output=sm.output.onnx, record_path=sm.output.record, config=sm.config)
