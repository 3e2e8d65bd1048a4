# Opt-in (`download: true`): the official checkpoint and COCO 2017 val, fetched when absent and
# verified (sha256, size), from config `sources`. rules/common.smk decides which inputs are fetched
# (DOWNLOADS); for any other, download_path() names a path nothing reads, so these rules never
# touch an input that is already there (not even with -F or --delete-all-output).


rule download_checkpoint:
    output:
        download_path("checkpoint"),
    log:
        "results/logs/download/checkpoint.log",
    localrule: True  # on the submitting host: compute nodes often have no internet
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    params:
        source=download_source("checkpoint"),
    script:
        "../scripts/download.py"


rule download_coco_images:
    output:
        directory(download_path("images")),
    log:
        "results/logs/download/coco_images.log",
    localrule: True  # on the submitting host: compute nodes often have no internet
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    params:
        source=download_source("images"),
    script:
        "../scripts/download.py"


rule download_coco_annotations:
    output:
        download_path("annotations"),
    log:
        "results/logs/download/coco_annotations.log",
    localrule: True  # on the submitting host: compute nodes often have no internet
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    params:
        source=download_source("annotations"),
    script:
        "../scripts/download.py"
