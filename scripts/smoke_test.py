"""Rule smoke_test: run an ONNX model in ONNX Runtime and write the smoke JSON."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_torch import smoke_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    smoke_step,
    threads=min(sm.threads, sm.config["threads"]),  # a timing job holds every local core; computes with `threads`
    onnx_path=sm.input.onnx,
    checkpoint=sm.input.checkpoint,
    quantized=sm.input.get("quantized"),
    output=sm.output[0],
    variant=sm.wildcards.variant,
    image=sm.params.image,
    device=sm.params.device,
    precision=sm.params.precision,
    runs=sm.params.runs,
    warmup=sm.params.warmup,
    conf=sm.params.conf,
    head=sm.params.head,
    imgsz=sm.params.imgsz,
    config=sm.config,
    trust=sm.config["trust_checkpoint"],
)
