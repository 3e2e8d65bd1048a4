rule smoke_test:
    input:
        unpack(model_inputs),
        onnx=lambda wc: onnx_path(wc.variant),
        runtime=runtime_path(),
    output:
        f"{RUN}/smoke/{{model}}-{{variant}}.json",
    log:
        f"{RUN}/logs/smoke_test/{{model}}-{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/smoke_test/{{model}}-{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: timing_threads
    resources:
        **job_resources(mem_mb=4000, runtime=15, gpu=True),
    params:
        image=config["smoke"]["image"],
        device=config["device"],
        precision=runtime_precision,
        runs=config["smoke"]["runs"],
        warmup=config["smoke"]["warmup"],
        conf=config["smoke"]["conf"],
        head=config["head"],
        imgsz=config["imgsz"],
    script:
        "../scripts/smoke_test.py"
