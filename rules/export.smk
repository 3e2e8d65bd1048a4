rule probe_runtime:
    # FP16 where ONNX Runtime really runs CUDA, decided in the env that runs the models.
    output:
        runtime_path(),
    log:
        f"{RUN}/logs/probe_runtime.log",
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=2000, runtime=10, gpu=True),
    params:
        device=config["device"],
        precision=config["precision"],
    script:
        "../scripts/probe_runtime.py"


rule export_fp:
    input:
        checkpoint=CHECKPOINT,
        runtime=runtime_path(),
    output:
        onnx=f"{RUN}/onnx/{{model}}-fp.onnx",
        record=f"{RUN}/onnx/{{model}}-fp.json",
    log:
        f"{RUN}/logs/export_fp/{{model}}.log",
    benchmark:
        f"{RUN}/benchmarks/export_fp/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=15),
    params:
        precision=runtime_precision,
        head=config["head"],
        imgsz=config["imgsz"],
    script:
        "../scripts/export_onnx.py"


rule export_qcdq:
    input:
        unpack(model_inputs),
        runtime=runtime_path(),
    output:
        onnx=f"{RUN}/onnx/{{model}}-{{variant}}-qcdq-ptq.onnx",
        record=f"{RUN}/onnx/{{model}}-{{variant}}-qcdq-ptq.json",
    log:
        f"{RUN}/logs/export_qcdq/{{model}}-{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/export_qcdq/{{model}}-{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=15),
    params:
        precision=runtime_precision,
        head=config["head"],
        imgsz=config["imgsz"],
    script:
        "../scripts/export_onnx.py"


rule pack_int4:
    input:
        onnx=lambda wc: onnx_path(wc.variant),
    output:
        onnx=f"{RUN}/onnx/{{model}}-{{variant}}-int4-ptq.onnx",
        record=f"{RUN}/onnx/{{model}}-{{variant}}-int4-ptq.json",
    log:
        f"{RUN}/logs/pack_int4/{{model}}-{{variant}}.log",
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=15),
    script:
        "../scripts/pack_int4.py"
