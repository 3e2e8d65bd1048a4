rule seeded_checkpoint:
    # Random-weight checkpoints for the offline demo and the tests (no download possible).
    output:
        "results/seeded/{arch}-seed{seed}.pt",
    wildcard_constraints:
        arch=r"yolo[a-z0-9]+",
        seed=r"\d+",
    params:
        arch=lambda wc: f"{wc.arch}.yaml",
        seed=lambda wc: int(wc.seed),
    log:
        "results/seeded/logs/{arch}-seed{seed}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/seeded_checkpoint.py"


rule quantize_weights:
    input:
        checkpoint=CHECKPOINT,
    output:
        f"{RUN}/quantized/{{model}}-{{variant}}-ptq.pt",
    params:
        settings=lambda wc: config["variants"][wc.variant],
        head=config["head"],
        imgsz=config["imgsz"],
    log:
        f"{RUN}/logs/quantize_weights/{{model}}-{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/quantize_weights/{{model}}-{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/quantize_weights.py"
