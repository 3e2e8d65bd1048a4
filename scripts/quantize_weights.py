"""Rule quantize_weights: checkpoint -> W4 (or other bits) quantized state dict."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_torch import quantize_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    quantize_step,
    checkpoint=sm.input.checkpoint,
    output=sm.output[0],
    variant=sm.wildcards.variant,
    settings=dict(sm.params.settings),
    head=sm.params.head,
    imgsz=sm.params.imgsz,
    calibration={"record": sm.input.calibration, "limit": sm.params.calibration_limit}
    if sm.input.get("calibration")  # Snakemake's Namedlist: `in` would test values, not names
    else None,
    sensitivity=sm.input.get("sensitivity"),
    synthetic=sm.input.get("synthetic"),
    device=sm.params.device,
    trust=sm.config["trust_checkpoint"],
)
