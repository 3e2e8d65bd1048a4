"""The quantize rule's artifact: a state dict plus everything needed to rebuild the model.

A Brevitas module cannot be pickled with torch.save, so the artifact holds plain tensors
and settings. `load_quantized` rebuilds the FP model from the original checkpoint, applies
the same quantization, and loads the state dict: the outputs are bit-for-bit those of the
model that was saved.
"""

import torch

from yolo_w4.checkpoint import Detector, load_detector
from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path
from yolo_w4.provenance import utc_now, versions
from yolo_w4.quantize import quantization_summary, quantize_weights

FORMAT = "yolo_w4.quantized_state_dict/1"


def save_quantized(
    path, model: torch.nn.Module, detector: Detector, variant: str, settings: dict, calibration=None
) -> dict:
    """Write the artifact; return its record (everything but the tensors).

    calibration: per-layer records of what calibrated PTQ changed (None for plain RTN).
    """
    record = {
        "format": FORMAT,
        "variant": variant,
        "settings": settings,
        "calibration": calibration,
        "checkpoint": detector.describe(),
        "summary": quantization_summary(model),
        "versions": versions(),
        "created": utc_now(),
    }
    with atomic_path(path) as tmp:
        torch.save({**record, "state_dict": model.state_dict()}, tmp)
    return record


def read_record(path) -> dict:
    """The artifact's contents (tensors included), checked to be ours."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not a yolo-w4 quantized state dict ({type(error).__name__})") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a yolo-w4 quantized state dict (format {FORMAT} expected)")
    return data


def load_quantized(path, checkpoint=None, trust: bool = False) -> tuple[torch.nn.Module, Detector, dict]:
    """Rebuild the quantized model: (model, FP detector, record). trust: see checkpoint.unpickle_checkpoint."""
    data = read_record(path)
    source = data["checkpoint"]
    detector = load_detector(checkpoint or source["path"], head=source["head"], imgsz=source["imgsz"], trust=trust)
    if detector.sha256 != source["sha256"]:
        raise UserError(
            f"{path} was made from a checkpoint with sha256 {source['sha256'][:12]}…, but "
            f"{detector.path} has {detector.sha256[:12]}…; re-run the quantize rule"
        )
    model = quantize_weights(detector.model, data["settings"], initialise=False)
    model.load_state_dict(data.pop("state_dict"))
    return model.eval(), detector, data
