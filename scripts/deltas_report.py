"""Rule deltas_report: deltas vs FP with bootstrap intervals, as tables and plots."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_report import report_step

sm = snakemake  # noqa: F821
names = sm.params.names
run_rule(
    sm,
    report_step,
    metrics=dict(zip(names, sm.input.metrics)),
    detections=dict(zip(names, sm.input.detections)),
    exports=dict(zip(names, sm.input.exports)),
    packed=dict(zip(sm.params.packed, sm.input.packed)),
    latency=sm.input.latency,
    annotations=sm.input.annotations,
    outputs=dict(sm.output.items()),
    resamples=sm.params.resamples,
    seed=sm.params.seed,
    agreement_conf=sm.params.agreement_conf,
    config=sm.config,
)
