"""The quantize rule's artifact: a state dict plus everything needed to rebuild the model.

A Brevitas module cannot be pickled with torch.save, so the artifact holds plain tensors
and settings. `load_quantized` rebuilds the FP model from the original checkpoint, applies
the same quantization, and loads the state dict: the outputs are bit-for-bit those of the
model that was saved. The artifact also holds each quantized conv's integers and scales
(`export.quantized_weights`), so `load_dequantized` gives the export and smoke jobs the same
model without Brevitas: plain convs holding the dequantized weights (bit for bit the weights
Brevitas computes), and the integers the QCDQ file is written from.
"""

import numpy as np
import torch

from yolo_w4.checkpoint import Detector, load_detector
from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path
from yolo_w4.provenance import utc_now, versions
from yolo_w4.quantize import quantization_summary, quantize_weights

FORMAT = "yolo_w4.quantized_state_dict/2"  # 2: with the integers (`weights`)


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
    from yolo_w4.export import quantized_weights

    weights = {
        name: {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value for key, value in layer.items()}
        for name, layer in quantized_weights(model).items()
    }
    with atomic_path(path) as tmp:
        torch.save({**record, "state_dict": model.state_dict(), "weights": weights}, tmp)
    return record


def read_record(path) -> dict:
    """The artifact's contents (tensors included), checked to be ours."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not a yolo-w4 quantized state dict ({type(error).__name__})") from error
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, str) and found.startswith(FORMAT.split("/")[0]) and found != FORMAT:
        raise UserError(
            f"{path} was written by another yolo-w4 version ({found}, {FORMAT} expected); re-run the quantize rule"
        )
    if found != FORMAT:
        raise UserError(f"{path} is not a yolo-w4 quantized state dict (format {FORMAT} expected)")
    return data


def _source_detector(path, data: dict, checkpoint, trust: bool) -> Detector:
    """The FP detector the artifact was quantized from, checked by sha256."""
    source = data["checkpoint"]
    detector = load_detector(checkpoint or source["path"], head=source["head"], imgsz=source["imgsz"], trust=trust)
    if detector.sha256 != source["sha256"]:
        raise UserError(
            f"{path} was made from a checkpoint with sha256 {source['sha256'][:12]}…, but "
            f"{detector.path} has {detector.sha256[:12]}…; re-run the quantize rule"
        )
    return detector


def load_quantized(path, checkpoint=None, trust: bool = False) -> tuple[torch.nn.Module, Detector, dict]:
    """Rebuild the quantized model: (model, FP detector, record). trust: see checkpoint.unpickle_checkpoint."""
    data = read_record(path)
    detector = _source_detector(path, data, checkpoint, trust)
    model = quantize_weights(detector.model, data["settings"], initialise=False)
    model.load_state_dict(data.pop("state_dict"))
    data.pop("weights")
    return model.eval(), detector, data


def _group_buffers(weights: dict) -> set:
    """(layer, buffer) of every group-wise layer's grid buffers (groupwise.GroupQuantConv2d)."""
    return {(name, buffer) for name in weights for buffer in ("scale", "zero_point")}


def load_dequantized(path, checkpoint=None, trust: bool = False) -> tuple[torch.nn.Module, Detector, dict, dict]:
    """(the quantized model as plain convs with its dequantized weights, FP detector, record, integers by layer).

    No Brevitas and no quantization (seconds less per job on YOLOv10m): the model computes what the
    quantized model computes, and `export.export_qcdq(model, ..., weights=...)` writes its file.
    """
    from yolo_w4.export import dequantize

    data = read_record(path)
    detector = _source_detector(path, data, checkpoint, trust)
    weights = {
        name: {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in layer.items()}
        for name, layer in data.pop("weights").items()
    }
    state = data.pop("state_dict")
    quantizer_keys = [
        key for key in state if ".weight_quant." in key or key.rpartition(".")[::2] in _group_buffers(weights)
    ]  # Brevitas' scale parameters, group-wise scales and zero points: their integers say it all
    for key in quantizer_keys:
        del state[key]
    model = detector.model
    model.load_state_dict(state)
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(dequantize(weight))
    return model.eval(), detector, data, weights
