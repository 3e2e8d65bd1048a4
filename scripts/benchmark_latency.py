"""Rule benchmark_latency: every ONNX model timed in one process, interleaved."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import latency_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    latency_step,
    threads=min(sm.threads, sm.config["threads"]),  # a timing job holds every local core; computes with `threads`
    models=dict(zip(sm.params.names, sm.input.onnx)),
    ids_file=sm.input.ids,
    annotations=sm.input.annotations,
    images=sm.input.images,
    output=sm.output[0],
    device=sm.params.device,
    count=sm.params.images_timed,
    rounds=sm.params.rounds,
    imgsz=sm.params.imgsz,
    config=sm.config,
)
