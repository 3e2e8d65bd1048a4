"""Rule layer_sensitivity: rank convs by the output distortion 4-bit weights cause alone."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_torch import sensitivity_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    sensitivity_step,
    checkpoint=sm.input.checkpoint,
    calibration=sm.input.calibration,
    table=sm.output.table,
    plot=sm.output.plot,
    head=sm.params.head,
    imgsz=sm.params.imgsz,
    images_used=sm.params.images_used,
    device=sm.params.device,
    trust=sm.config["trust_checkpoint"],
)
