"""Which layers 4-bit weights hurt most, measured without labels; and which to keep at 8 bits.

Each quantizable conv in turn gets round-to-nearest 4-bit per-channel weights (all others
stay FP) and the dense head output on calibration images is compared with the FP model's.
The output SQNR (dB) ranks the layers: lowest = most sensitive.
"""

import contextlib
import csv

import torch

from yolo_w4.files import atomic_path
from yolo_w4.grid import integer_range, round_to_grid
from yolo_w4.parity import sqnr_db
from yolo_w4.quantize import conv_layers, quantizable_layers


def dense_output(model, x: torch.Tensor, imgsz: int) -> torch.Tensor:
    """The head's pre-top-k output (boxes / imgsz, scores), the same for one2one and one2many."""
    head = model.model[-1]
    captured = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return head_output(head, captured[0], imgsz)


def head_output(head, features, imgsz: int) -> torch.Tensor:
    """`dense_output` from the head's input feature maps."""
    from ultralytics.nn.modules.head import Detect

    if isinstance(head, Detect):
        branch = head.one2one if head.end2end else head.one2many
        output = head._inference(head.forward_head(features, **branch))
    else:
        output = head(features)
    return torch.cat((output[:, :4] / imgsz, output[:, 4:]), 1)


def round_to_nearest(weight: torch.Tensor, bits: int = 4, narrow_range: bool = True) -> torch.Tensor:
    """Symmetric per-output-channel min-max RTN, the same grid as the default Brevitas quantizer."""
    qmin, qmax = integer_range(bits, narrow_range)
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).clamp_min(1e-12) / qmax
    return round_to_grid(weight, scale, qmin, qmax)


@contextlib.contextmanager
def swapped_weight(conv: torch.nn.Conv2d, weight: torch.Tensor):
    original = conv.weight.data
    conv.weight.data = weight
    try:
        yield
    finally:
        conv.weight.data = original


def layer_sensitivity(model, calibration, imgsz: int = 640, bits: int = 4, keep_float=()) -> list[dict]:
    """One row per quantizable conv: output SQNR with only that layer quantized, sorted worst first.

    Runs where the model and the calibration tensors are (CPU or CUDA); the SQNR is computed on CPU.
    """
    layers = conv_layers(model)
    with torch.no_grad():
        reference = [dense_output(model, x, imgsz) for x in calibration]
        rows = []
        for name in quantizable_layers(model, keep_float):
            conv = layers[name]
            with swapped_weight(conv, round_to_nearest(conv.weight, bits)):
                outputs = [dense_output(model, x, imgsz) for x in calibration]
            sqnr = sqnr_db(torch.cat(reference).cpu().numpy(), torch.cat(outputs).cpu().numpy())
            rows.append({"layer": name, "output_sqnr_db": round(sqnr, 3), "weights": conv.weight.numel()})
    rows.sort(key=lambda row: row["output_sqnr_db"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def apply_mixed_precision(ranking: list[dict], *, min_4bit_fraction: float, high_bits: int) -> dict:
    """Mixed precision (`mixed:`): {layer: high_bits} for the most sensitive layers the budget allows."""
    return {name: high_bits for name in choose_high_precision(ranking, min_4bit_fraction)}


def choose_high_precision(rows: list[dict], min_4bit_fraction: float) -> list[str]:
    """Most sensitive layers first, while the 4-bit share of conv weights stays >= the budget."""
    total = sum(row["weights"] for row in rows)
    budget = (1.0 - min_4bit_fraction) * total
    chosen, used = [], 0
    for row in rows:  # sorted worst first
        if used + row["weights"] <= budget:
            chosen.append(row["layer"])
            used += row["weights"]
    return chosen


FIELDS = ("rank", "layer", "output_sqnr_db", "weights")


def write_sensitivity(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in FIELDS} for row in rows)


def read_sensitivity(path) -> list[dict]:
    """The ranking, most sensitive first."""
    with open(path, newline="") as handle:
        rows = [
            {
                "rank": int(r["rank"]),
                "layer": r["layer"],
                "output_sqnr_db": float(r["output_sqnr_db"]),
                "weights": int(r["weights"]),
            }
            for r in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda row: row["rank"])
