rule export_fp:
    input:
        checkpoint=CHECKPOINT,
    output:
        onnx=f"{RUN}/onnx/{{model}}-{{precision}}.onnx",
        record=f"{RUN}/onnx/{{model}}-{{precision}}.json",
    params:
        precision=lambda wc: wc.precision,
        head=config["head"],
        imgsz=config["imgsz"],
    log:
        f"{RUN}/logs/export_fp/{{model}}-{{precision}}.log",
    benchmark:
        f"{RUN}/benchmarks/export_fp/{{model}}-{{precision}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/export_onnx.py"


rule export_qcdq:
    input:
        unpack(model_inputs),
    output:
        onnx=f"{RUN}/onnx/{{model}}-{{variant}}-qcdq-ptq.onnx",
        record=f"{RUN}/onnx/{{model}}-{{variant}}-qcdq-ptq.json",
    params:
        precision=PRECISION,
        head=config["head"],
        imgsz=config["imgsz"],
    log:
        f"{RUN}/logs/export_qcdq/{{model}}-{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/export_qcdq/{{model}}-{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
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
    script:
        "../scripts/pack_int4.py"
