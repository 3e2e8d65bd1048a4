"""Rule probe_runtime: the provider and precision ONNX Runtime really runs with, in its own env."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import probe_step

sm = snakemake  # noqa: F821
run_rule(sm, probe_step, output=sm.output[0], device=sm.params.device, precision=sm.params.precision, config=sm.config)
