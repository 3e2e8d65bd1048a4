"""Rule synthesize_calibration: checkpoint -> data-free calibration images (BatchNorm statistics)."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_torch import synthesize_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    synthesize_step,
    checkpoint=sm.input.checkpoint,
    output=sm.output.images,
    picture=sm.output.picture,
    images=sm.params.images,
    imgsz=sm.params.imgsz,
    steps=sm.params.steps,
    lr=sm.params.lr,
    seed=sm.params.seed,
    batch=sm.params.batch,
    coarse=sm.params.coarse,
    device=sm.params.device,
    trust=sm.config["trust_checkpoint"],
)
