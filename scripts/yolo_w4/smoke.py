"""Prove an exported ONNX model runs in ONNX Runtime and matches its PyTorch source."""

from pathlib import Path

import torch

from yolo_w4.checkpoint import Detector
from yolo_w4.decode import decode
from yolo_w4.errors import UserError
from yolo_w4.export import onnx_summary
from yolo_w4.parity import compare_outputs
from yolo_w4.preprocess import load_input
from yolo_w4.provenance import input_record, utc_now, versions
from yolo_w4.runtime import create_session, input_feed, io_record, time_runs

# FP32 exports reproduce their PyTorch model at >= 80 dB with every one2one row matched (300 of 300),
# an unrelated pair at ~20 dB or with no row matched. FP16 runs have no floor: a random-weight W4
# YOLOv10m's FP16 output is 25 dB from its FP32 one (make gpu-check).
MIN_PARITY_DB = 30.0
MIN_ROWS_MATCHED = 0.5  # one2one: the share of ONNX rows that must have their PyTorch row


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
    check_identity(session, onnx_path, detector, variant)
    tensor, mapping = load_input(image, detector.imgsz)
    feed = input_feed(session, tensor)
    output = session.run(None, feed)[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(tensor)).numpy()
    detections = decode(output, detector.head, mapping, conf=conf)
    parity = compare_outputs(expected, output, detector.head)
    fp32 = session.get_inputs()[0].type == "tensor(float)"
    if fp32:
        check_parity(parity, onnx_path)
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
            **parity,
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


def check_parity(parity: dict, onnx_path) -> None:
    """An FP32 export must reproduce the PyTorch model it claims to come from (see MIN_PARITY_DB)."""
    rows = parity.get("rows")
    if rows and parity["rows_matched"] < MIN_ROWS_MATCHED * rows:
        found = f"only {parity['rows_matched']} of its {rows} output rows match"
    elif parity["sqnr_db"] is not None and parity["sqnr_db"] < MIN_PARITY_DB:
        found = f"it reproduces it at only {parity['sqnr_db']} dB SQNR (at least {MIN_PARITY_DB} expected)"
    else:
        return
    raise UserError(f"{onnx_path} is not a faithful export of this checkpoint and variant: {found}; export it again")


def check_identity(session, onnx_path, detector: Detector, variant: str) -> None:
    """The ONNX must be the export of this checkpoint, head, variant and input size, as its metadata states;
    else the smoke JSON would label one model with another's name and compare unrelated outputs."""
    metadata = session.get_modelmeta().custom_metadata_map
    expected = {
        "yolo_w4_variant": variant,
        "yolo_w4_checkpoint_sha256": detector.sha256,
        "yolo_w4_head": detector.head,
    }
    if "yolo_w4_variant" not in metadata:
        raise UserError(
            f"{onnx_path} carries no yolo-w4 metadata ({', '.join(expected)}); smoke-test an ONNX written by "
            "`python -m yolo_w4 export` or the workflow"
        )
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise UserError(
                f"{onnx_path} is not the model it is said to be: its {key} is {metadata.get(key)!r}, not {value!r}; "
                "pass the ONNX exported from this --checkpoint and --quantized (or export it again)"
            )
    side = session.get_inputs()[0].shape[2:]
    if side != [detector.imgsz, detector.imgsz]:
        raise UserError(
            f"{onnx_path} takes {'x'.join(map(str, side))} inputs, not {detector.imgsz}x{detector.imgsz}; "
            f"pass --imgsz {side[-1]} or export it again at imgsz {detector.imgsz}"
        )
