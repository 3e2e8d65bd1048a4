"""Rule seeded_checkpoint: a random-weight checkpoint from an Ultralytics YAML (demo, tests)."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_torch import seeded_step

run_rule(snakemake, seeded_step, output=snakemake.output[0], arch=snakemake.params.arch, seed=snakemake.params.seed)  # noqa: F821
