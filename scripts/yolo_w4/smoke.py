"""Prove an exported ONNX model runs in ONNX Runtime and matches its PyTorch source."""

from pathlib import Path

import torch

from yolo_w4.checkpoint import Detector
from yolo_w4.decode import decode
from yolo_w4.export import onnx_summary
from yolo_w4.parity import compare_outputs
from yolo_w4.preprocess import load_input
from yolo_w4.provenance import input_record, utc_now, versions
from yolo_w4.runtime import create_session, input_feed, io_record, time_runs


def default_image() -> Path:
    """bus.jpg from the Ultralytics package: a real photo that is always there offline."""
    from ultralytics.utils import ASSETS

    return ASSETS / "bus.jpg"


def smoke_test(
    onnx_path,
    reference: torch.nn.Module,
    detector: Detector,
    variant: str,
    image=None,
    device: str = "auto",
    precision: str = "fp32",
    runs: int = 20,
    warmup: int = 3,
    conf: float = 0.25,
) -> dict:
    """Run `onnx_path` on a real photo; time it; compare with `reference` (FP32 PyTorch)."""
    image = Path(image) if image else default_image()
    session, providers = create_session(onnx_path, device)
    tensor, mapping = load_input(image, detector.imgsz)
    feed = input_feed(session, tensor)
    output = session.run(None, feed)[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(tensor)).numpy()
    detections = decode(output, detector.head, mapping, conf=conf)
    return {
        "variant": variant,
        "onnx": str(onnx_path),
        **providers,
        "precision": precision,
        "threads": {"onnxruntime_intra_op": providers["intra_op_num_threads"], "torch": torch.get_num_threads()},
        "input_dtype": str(feed[next(iter(feed))].dtype),
        "model_io": io_record(session),
        "latency": {**time_runs(lambda: session.run(None, feed), runs, warmup), "batch": 1},
        "parity": {
            "reference": "PyTorch FP32 model the ONNX was exported from",
            **compare_outputs(expected, output, detector.head),
        },
        "detections": {
            "image": str(image),
            "conf": conf,
            "count": len(detections),
            "boxes": detections.as_records(detector.names),
        },
        "graph": {k: v for k, v in onnx_summary(onnx_path).items() if k != "weight_clips"},
        "checkpoint": detector.describe(),
        "inputs": input_record({"onnx": onnx_path, "image": image}),
        "versions": versions(),
        "created": utc_now(),
    }
