"""Rules download_*: fetch one absent input from its configured source, verified (yolo_w4.download)."""

from yolo_w4.download import fetch
from yolo_w4.rule_runner import run_rule

run_rule(snakemake, fetch, source=snakemake.params.source, target=snakemake.output[0])  # noqa: F821
