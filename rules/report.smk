rule deltas_report:
    input:
        annotations=subset_outputs()["annotations"],
        metrics=[metrics_path(v) for v in [FP, *VARIANTS]],
        detections=[metrics_path(v, "detections") for v in [FP, *VARIANTS]],
        exports=[export_record(v) for v in [FP, *VARIANTS]],
        packed=[int4_record(v) for v in PACKED],
        latency=rules.benchmark_latency.output[0],
    output:
        csv=report(
            report_path("csv"),
            caption="report/deltas_csv.rst",
            category=report_category("Deltas vs FP"),
            labels={"table": "all metrics (CSV)"},
        ),
        markdown=report_path("markdown"),
        html=report(
            report_path("html"),
            caption="report/deltas_html.rst",
            category=report_category("Deltas vs FP"),
            labels={"table": "summary (HTML)"},
        ),
        rst=report_path("rst"),
        json=report_path("json"),
        map_plot=report(
            report_path("map_plot"),
            caption="report/map_plot.rst",
            category=report_category("Plots"),
            labels={"figure": "mAP and delta CI"},
        ),
        size_plot=report(
            report_path("size_plot"),
            caption="report/size_plot.rst",
            category=report_category("Plots"),
            labels={"figure": "size vs mAP"},
        ),
        latency_plot=report(
            report_path("latency_plot"),
            caption="report/latency_plot.rst",
            category=report_category("Plots"),
            labels={"figure": "latency"},
        ),
    log:
        f"{RUN}/logs/deltas_report.log",
    benchmark:
        f"{RUN}/benchmarks/deltas_report.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=2000, runtime=30),
    params:
        names=[FP, *VARIANTS],
        packed=PACKED,
        resamples=config["bootstrap"]["resamples"],
        seed=config["bootstrap"]["seed"],
        agreement_conf=config["eval"]["agreement_conf"],
    script:
        "../scripts/deltas_report.py"


rule draw_detections:
    input:
        annotations=subset_outputs()["annotations"],
        fp=metrics_path(FP, "detections"),
        fp_metrics=metrics_path(FP),
        variant=lambda wc: metrics_path(wc.variant, "detections"),
        images=COCO["images"],
    output:
        report(
            f"{RUN}/report/detections/{{model}}-{{variant}}.png",
            caption="report/detections.rst",
            category=report_category("Detections"),
            labels={"variant": "{variant}"},
        ),
    log:
        f"{RUN}/logs/draw_detections/{{model}}-{{variant}}.log",
    conda:
        "../envs/onnxruntime.yaml"
    threads: 1
    resources:
        **job_resources(mem_mb=2000, runtime=10),
    params:
        conf=config["report"]["draw_conf"],
        image_id=config["report"]["image_id"],
    script:
        "../scripts/draw_detections.py"
