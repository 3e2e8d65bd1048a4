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
            category="1. Deltas vs FP",
            labels={"table": "all metrics (CSV)"},
        ),
        markdown=report_path("markdown"),
        html=report(
            report_path("html"),
            caption="report/deltas_html.rst",
            category="1. Deltas vs FP",
            labels={"table": "summary (HTML)"},
        ),
        rst=report_path("rst"),
        json=report_path("json"),
        map_plot=report(
            report_path("map_plot"),
            caption="report/map_plot.rst",
            category="2. Plots",
            labels={"figure": "mAP and delta CI"},
        ),
        size_plot=report(
            report_path("size_plot"),
            caption="report/size_plot.rst",
            category="2. Plots",
            labels={"figure": "size vs mAP"},
        ),
        latency_plot=report(
            report_path("latency_plot"),
            caption="report/latency_plot.rst",
            category="2. Plots",
            labels={"figure": "latency"},
        ),
    log:
        f"{RUN}/logs/deltas_report.log",
    benchmark:
        f"{RUN}/benchmarks/deltas_report.tsv"
    conda:
        "../envs/report.yaml"
    params:
        names=[FP, *VARIANTS],
        packed=PACKED,
        resamples=config["bootstrap"]["resamples"],
        seed=config["bootstrap"]["seed"],
    script:
        "../scripts/deltas_report.py"


rule draw_detections:
    input:
        annotations=subset_outputs()["annotations"],
        fp=metrics_path(FP, "detections"),
        variant=lambda wc: metrics_path(wc.variant, "detections"),
        images=COCO["images"],
    output:
        report(
            f"{RUN}/report/detections/{{model}}-{{variant}}.png",
            caption="report/detections.rst",
            category="3. Detections",
            labels={"variant": "{variant}"},
        ),
    log:
        f"{RUN}/logs/draw_detections/{{model}}-{{variant}}.log",
    conda:
        "../envs/onnxruntime.yaml"
    params:
        conf=config["report"]["draw_conf"],
        image_id=config["report"]["image_id"],
    script:
        "../scripts/draw_detections.py"
