# yolo-w4: Ultralytics YOLO checkpoint -> 4-bit-weight (W4A16) QCDQ ONNX, checked in ONNX Runtime.
# The rule graph is drawn in README.md; path helpers live in rules/common.smk, threads and
# cluster resources in rules/resources.smk.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/download.smk"
include: "rules/quantize.smk"
include: "rules/export.smk"
include: "rules/smoke.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),


rule download:
    # Only fetch the absent inputs: snakemake --cores 1 download --config download=True
    input:
        [target for target, _ in DOWNLOADS.values()],
