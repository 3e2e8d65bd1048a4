"""Rule coco_subset: the fixed image ids (and their annotations) every model is scored on."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import subset_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    subset_step,
    annotations=sm.input.annotations or None,
    images=sm.input.images,
    ids_out=sm.output.ids,
    annotations_out=sm.output.annotations,
    max_images=sm.params.max_images,
    image_ids_list=sm.input.id_list or None,
)
