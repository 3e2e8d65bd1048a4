"""A bit budget per layer (`budget: {bits_per_weight: 4.5}`): each conv's format chosen to cost least.

Uniform groups of 32 spend 4.5 bits on every weight, on layers that lose nothing at 4 bits per
channel as on the few that lose much. Here each quantizable conv gets one format from FORMATS
(per channel, groups of 128/64/32/16, asymmetric groups of 64/32, 8 bits per channel), the one
set that minimises the summed cost under the budget: a multiple-choice knapsack over layers,
solved exactly by dynamic programming on the layers' stored bits counted in steps of 1/STEPS
of the budget, each rounded up (so the result never exceeds the budget).

A layer's cost in a format is measured without labels, like `sensitivity.layer_sensitivity`:
that conv alone rounded in the format (every other conv FP) as the recipe rounds it (to
nearest, or for GPTQ recipes by GPTQ on the layer's FP inputs), the squared error of the dense
head output against the FP model's, summed over the first `images` calibration images. Costs
are added over layers (the usual first-order assumption: errors of different layers are
independent); the recipe then calibrates the whole model in the chosen formats.
"""

import math

import numpy as np
import torch

from yolo_w4.quantize import conv_layers, quantizable_layers, stored_layer_bits
from yolo_w4.sensitivity import dense_output, head_output, swapped_weight

SCALE_BITS = 16  # FP16 scales, one per channel or group (quantize.quantization_summary counts the same)
STEPS = 4000  # the budget's resolution in the knapsack

# format name -> (integer bits, weights per scale (None: one per output channel), symmetric);
# asymmetric groups add a zero point of the integers' width per group (groupwise.py)
FORMATS = {
    "channel": (4, None, True),
    "g128": (4, 128, True),
    "g64": (4, 64, True),
    "g32": (4, 32, True),
    "g16": (4, 16, True),
    "g64_asym": (4, 64, False),
    "g32_asym": (4, 32, False),
    "int8": (8, None, True),
}


def format_layer(conv, fmt: str, narrow_range: bool, scale: str):
    """`conv` on the grid of format `fmt` (a groupwise.GroupQuantConv2d: the grid the recipe will use)."""
    from yolo_w4.groupwise import GroupQuantConv2d

    bits, group, symmetric = FORMATS[fmt]
    return GroupQuantConv2d(conv, bits, group or conv.weight[0].numel(), narrow_range, scale, symmetric)


def stored_bits(shape, fmt: str) -> int:
    """Bits a conv weight of `shape` takes in format `fmt`: its integers, FP16 scales and any zero points."""
    bits, group, symmetric = FORMATS[fmt]
    out, width = shape[0], math.prod(shape[1:])
    scales = out * (1 if group is None else math.ceil(width / min(group, width)))
    return stored_layer_bits(out * width, bits, scales, 0 if symmetric else scales, SCALE_BITS)


def format_gptq(conv, inverse, fmt: str, narrow_range: bool, scale: str, gptq_options: dict) -> torch.Tensor:
    """`conv`'s weight rounded by GPTQ in format `fmt`, on `inverse` (ptq.gptq_inverse of its FP input Hessian)."""
    from yolo_w4.ptq import _grouped, gptq, integer_bounds

    grid = format_layer(conv, fmt, narrow_range, scale)
    weight = _grouped(conv.weight.detach(), conv.groups)
    scales = _grouped(grid.element_scale(), conv.groups)
    low, high = integer_bounds(grid, grid.bits, narrow_range)
    rounded = gptq(weight, None, scales, low, high, gptq_options["damp"], gptq_options["act_order"], inverse=inverse)
    return rounded.reshape_as(conv.weight)


def format_costs(
    model, images, imgsz: int, formats, narrow_range: bool, scale: str, keep_float=(), gptq_options=None
) -> list[dict]:
    """One row per (quantizable conv, format): its stored bits and the head-output squared error it causes alone.

    gptq_options ({damp, act_order}): each layer is rounded in each format by GPTQ on its FP inputs,
    as a GPTQ recipe will round it, instead of to nearest (the cost of a format is what is left
    after the recipe's rounding: GPTQ gains more in some formats than in others).
    The FP activations are kept at each conv's stage, so a format's cost runs only the stages
    from there to the head, and the input statistics one stage per stage.
    """
    from yolo_w4.ptq import StagedActivations, collect_input_stats, gptq_inverse, stage_of

    layers = conv_layers(model)
    head = model.model[-1]
    activations = StagedActivations(model, images)
    stats = {}
    rows = []
    with torch.no_grad():
        reference = [dense_output(model, x, imgsz) for x in images]
        for name in quantizable_layers(model, keep_float):
            conv, stage = layers[name], stage_of(name)
            while activations.stage < stage:
                activations.run(advance=True)
            if gptq_options and name not in stats:  # every conv of the stage at once, the model FP
                in_stage = {n: m for n, m in layers.items() if stage_of(n) == stage}
                stats = collect_input_stats(model, in_stage, stage, activations, second_moment=True)
            if gptq_options:  # the layer's Hessian inverse, once for every format
                inverse = gptq_inverse(stats[name].hessian, gptq_options["damp"], gptq_options["act_order"])
            for fmt in formats:
                if gptq_options:
                    rounded = format_gptq(conv, inverse, fmt, narrow_range, scale, gptq_options)
                else:
                    rounded = format_layer(conv, fmt, narrow_range, scale).quant_weight().value
                with swapped_weight(conv, rounded):
                    error = sum(
                        float((head_output(head, activations.head_inputs(i), imgsz) - ref).pow(2).sum())
                        for i, ref in enumerate(reference)
                    )
                rows.append({"layer": name, "format": fmt, "bits": stored_bits(conv.weight.shape, fmt), "cost": error})
    return rows


def choose_formats(rows: list[dict], capacity_bits: float) -> dict:
    """{layer: format} with the least summed cost whose stored bits stay within `capacity_bits` (exact knapsack).

    Raises ValueError when even the cheapest format of every layer does not fit.
    """
    by_layer = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    step = capacity_bits / STEPS

    def units(option) -> int:  # the option's bits in budget steps, rounded up
        return math.ceil(option["bits"] / step - 1e-9)

    inf = float("inf")
    best = np.full(STEPS + 1, inf)  # best[c]: least cost of the layers so far within c steps
    best[0] = 0.0
    choices = []
    for options in by_layer.values():
        new, pick = np.full(STEPS + 1, inf), np.full(STEPS + 1, -1)
        for k, option in enumerate(options):
            size = units(option)
            if size > STEPS:
                continue
            shifted = np.full(STEPS + 1, inf)
            shifted[size:] = best[: STEPS + 1 - size] + option["cost"]
            better = shifted < new
            new[better], pick[better] = shifted[better], k
        best = new
        choices.append(pick)
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        raise ValueError("the bit budget is below the smallest format of every layer")
    chosen = {}
    for (layer, options), pick in zip(reversed(by_layer.items()), reversed(choices)):
        option = options[int(pick[end])]
        chosen[layer] = option["format"]
        end -= units(option)
    return dict(reversed(chosen.items()))


def apply_bit_budget(
    model,
    calibration,
    *,
    bits_per_weight: float,
    images: int,
    formats,
    narrow_range: bool,
    scale: str,
    imgsz: int,
    keep_float=(),
    gptq_options=None,
) -> tuple[dict, list[dict]]:
    """`budget:`: each quantizable conv's format under `bits_per_weight` over all conv weights.

    bits_per_weight, images (costs are measured on the first `images` of `calibration`) and
    formats are the recipe's `budget` settings. Float convs (the DFL conv, keep_float) count
    at 16 bits, as the report's bits per weight. gptq_options: cost each format after GPTQ
    (`format_costs`). Returns ({layer: format}, the cost rows).
    """
    from yolo_w4.errors import UserError

    layers = conv_layers(model)
    selected = set(quantizable_layers(model, keep_float))
    total = sum(m.weight.numel() for m in layers.values())
    fixed = sum(m.weight.numel() * SCALE_BITS for n, m in layers.items() if n not in selected)
    rows = format_costs(model, calibration[:images], imgsz, formats, narrow_range, scale, keep_float, gptq_options)
    try:
        chosen = choose_formats(rows, bits_per_weight * total - fixed)
    except ValueError:
        least = (fixed + sum(min(r["bits"] for r in rows if r["layer"] == n) for n in selected)) / total
        raise UserError(
            f"budget.bits_per_weight {bits_per_weight} is below what this model's convs take in the smallest "
            f"formats listed ({least:.3f} bits per weight); raise it or list cheaper formats"
        ) from None
    return chosen, rows


def layer_settings(chosen: dict) -> dict:
    """The per-layer settings quantize_weights reads: layer_bits, layer_groups and layer_symmetric, by layer."""
    return {
        key: {name: FORMATS[fmt][index] for name, fmt in chosen.items()}
        for index, key in enumerate(("layer_bits", "layer_groups", "layer_symmetric"))
    }
