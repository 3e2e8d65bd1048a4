"""Rule draw_detections: FP and quantized boxes side by side on one subset image."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import draw_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    draw_step,
    image_dir=sm.input.images,
    annotations=sm.input.annotations,
    fp_detections=sm.input.fp,
    detections=sm.input.variant,
    variant=sm.wildcards.variant,
    output=sm.output[0],
    conf=sm.params.conf,
    image_id=sm.params.image_id,
    fp_metrics=sm.input.fp_metrics,
)
