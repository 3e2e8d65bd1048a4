rule ultralytics_assets:
    # The photos that ship inside the Ultralytics package: the offline demo's "COCO" images.
    output:
        directory(ASSETS),
    log:
        "results/logs/ultralytics_assets.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=1000, runtime=10),
    script:
        "../scripts/ultralytics_assets.py"


rule coco_subset:
    input:
        annotations=COCO["annotations"] or [],  # none: the folder's first max_images files
        images=COCO["images"],
        id_list=COCO["image_ids_list"] or [],
    output:
        **subset_outputs(),
    log:
        f"{RUN}/logs/coco_subset.log",
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=2000, runtime=10),
    params:
        max_images=COCO["max_images"],
    script:
        "../scripts/coco_subset.py"


rule evaluate_coco:
    input:
        **subset_outputs(),
        onnx=lambda wc: onnx_path(wc.variant),
        record=lambda wc: export_record(wc.variant),
        images=COCO["images"],
        runtime=runtime_path(),
    output:
        metrics=f"{RUN}/metrics/{{model}}-{{variant}}.json",
        detections=f"{RUN}/metrics/{{model}}-{{variant}}-detections.json",
    log:
        f"{RUN}/logs/evaluate_coco/{{model}}-{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/evaluate_coco/{{model}}-{{variant}}.tsv"
    conda:
        "../envs/onnxruntime.yaml"
    threads: THREADS
    resources:
        **job_resources(mem_mb=4000, runtime=30, gpu=True),
    params:
        head=config["head"],
        imgsz=config["imgsz"],
        device=config["device"],
        precision=runtime_precision,
        conf=config["eval"]["conf"],
        iou=config["eval"]["iou"],
        max_det=config["eval"]["max_det"],
        multi_label=config["eval"]["multi_label"],
    script:
        "../scripts/evaluate_coco.py"


rule benchmark_latency:
    input:
        **subset_outputs(),
        onnx=[onnx_path(v) for v in [FP, *VARIANTS]],
        images=COCO["images"],
    output:
        f"{RUN}/latency/{MODEL}.json",
    log:
        f"{RUN}/logs/benchmark_latency/{MODEL}.log",
    benchmark:
        f"{RUN}/benchmarks/benchmark_latency/{MODEL}.tsv"
    conda:
        "../envs/onnxruntime.yaml"
    threads: timing_threads
    resources:
        **job_resources(mem_mb=4000, runtime=30, gpu=True),
    params:
        names=[FP, *VARIANTS],
        device=config["device"],
        images_timed=config["latency"]["images"],
        rounds=config["latency"]["rounds"],
        imgsz=config["imgsz"],
    script:
        "../scripts/benchmark_latency.py"
