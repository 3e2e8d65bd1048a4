rule seeded_checkpoint:
    # Random-weight checkpoints for the offline demo and the tests (no download possible).
    output:
        "results/seeded/{arch}-seed{seed}.pt",
    log:
        "results/seeded/logs/{arch}-seed{seed}.log",
    wildcard_constraints:
        arch=r"yolo[a-z0-9]+",
        seed=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=15),
    params:
        arch=lambda wc: f"{wc.arch}.yaml",
        seed=lambda wc: int(wc.seed),
    script:
        "../scripts/seeded_checkpoint.py"


rule calibration_subset:
    # The calibration photos: the folder's first ones outside the evaluation subset.
    input:
        annotations=CALIBRATION_ANNOTATIONS or [],
        images=CALIBRATION_IMAGES,
        eval_subset=subset_outputs()["annotations"],
        eval_images=COCO["images"],
        id_list=CALIBRATION["image_ids_list"] or [],
    output:
        calibration_record(),
    log:
        f"{RUN}/logs/calibration_subset.log",
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=8000, runtime=15),
    params:
        max_images=CALIBRATION["max_images"],
    script:
        "../scripts/calibration_subset.py"


rule synthesize_calibration:
    # Data-free calibration images: distilled from the checkpoint's BatchNorm statistics.
    input:
        checkpoint=CHECKPOINT,
    output:
        images=synthetic_path(),
        picture=report(
            f"{RUN}/calibration/{MODEL}-synthetic.png",
            caption="report/synthetic.rst",
            category=report_category("Calibration"),
        ),
    log:
        f"{RUN}/logs/synthesize_calibration/{MODEL}.log",
    benchmark:
        f"{RUN}/benchmarks/synthesize_calibration/{MODEL}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: THREADS
    resources:
        **job_resources(mem_mb=16000, runtime=240, gpu=True),
    params:
        images=CALIBRATION["synthetic"]["images"],
        imgsz=CALIBRATION["synthetic"]["imgsz"] or config["imgsz"],
        steps=CALIBRATION["synthetic"]["steps"],
        lr=CALIBRATION["synthetic"]["lr"],
        seed=CALIBRATION["synthetic"]["seed"],
        batch=CALIBRATION["synthetic"]["batch"],
        coarse=CALIBRATION["synthetic"]["coarse"],
        device=config["device"],
    script:
        "../scripts/synthesize_calibration.py"


rule layer_sensitivity:
    # Label-free ranking: output SQNR with one conv at 4 bits, every other FP.
    input:
        checkpoint=CHECKPOINT,
        calibration=calibration_record(),
    output:
        table=report(
            sensitivity_path(),
            caption="report/sensitivity.rst",
            category=report_category("Sensitivity"),
            labels={"item": "table (CSV)"},
        ),
        plot=report(
            f"{RUN}/sensitivity/{MODEL}.png",
            caption="report/sensitivity.rst",
            category=report_category("Sensitivity"),
            labels={"item": "plot"},
        ),
    log:
        f"{RUN}/logs/layer_sensitivity/{MODEL}.log",
    benchmark:
        f"{RUN}/benchmarks/layer_sensitivity/{MODEL}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: THREADS
    resources:
        **job_resources(mem_mb=4000, runtime=120, gpu=True),
    params:
        head=config["head"],
        imgsz=config["imgsz"],
        images_used=CALIBRATION["sensitivity_images"],
        device=config["device"],
    script:
        "../scripts/layer_sensitivity.py"


rule quantize_weights:
    input:
        unpack(quantize_inputs),
    output:
        f"{RUN}/quantized/{{model}}-{{variant}}-ptq.pt",
    log:
        f"{RUN}/logs/quantize_weights/{{model}}-{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/quantize_weights/{{model}}-{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: THREADS
    resources:
        **job_resources(mem_mb=16000, runtime=240, gpu=calibrated_variant),
    params:
        settings=lambda wc: RECIPES[wc.variant],
        head=config["head"],
        imgsz=config["imgsz"],
        calibration_limit=CALIBRATION["max_images"],
        device=config["device"],
    script:
        "../scripts/quantize_weights.py"
