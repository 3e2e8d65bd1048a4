"""Rule evaluate_coco: score one ONNX model on the COCO subset in ONNX Runtime."""

from yolo_w4.rule_runner import run_rule
from yolo_w4.steps_onnxruntime import evaluate_step

sm = snakemake  # noqa: F821
run_rule(
    sm,
    evaluate_step,
    onnx_path=sm.input.onnx,
    annotations=sm.input.annotations,
    ids_file=sm.input.ids,
    images=sm.input.images,
    metrics_out=sm.output.metrics,
    detections_out=sm.output.detections,
    variant=sm.wildcards.variant,
    head=sm.params.head,
    imgsz=sm.params.imgsz,
    device=sm.params.device,
    precision=sm.params.precision,
    conf=sm.params.conf,
    iou=sm.params.iou,
    max_det=sm.params.max_det,
    multi_label=sm.params.multi_label,
    export_record=sm.input.record,
    config=sm.config,
)
