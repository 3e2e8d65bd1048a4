"""Rule calibration_subset: the calibration photos, never an evaluation image."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import calibration_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    calibration_step,
    images=sm.input.images,
    output=sm.output[0],
    max_images=sm.params.max_images,
    annotations=sm.input.annotations or None,
    eval_subset=sm.input.eval_subset,
    eval_images=sm.input.eval_images,
    image_ids_list=sm.input.id_list or None,
)
