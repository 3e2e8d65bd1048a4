"""Weight-only post-training quantization of a fused detector with Brevitas.

The grid every recipe starts from, round to nearest (recipe.py composes the calibrated
techniques on top): `weight_quantizer` picks the Brevitas quantizer, `quantizable_layers`
says which convs get it, `quantize_weights` swaps them in, `quantization_summary` says what
happened. Inputs, outputs and biases stay floating point: this is W4A16, not W4A8.
"""

import copy
import fnmatch

import torch

from yolo_w4.errors import UserError
from yolo_w4.grid import FP16_MAX, fp16_exact
from yolo_w4.groupwise import swap_in_groupwise

# The DFL conv is a fixed arange(16) projection that decodes box distributions; quantizing it
# shifts every box, and it is not a learned weight.
ALWAYS_FLOAT = ("*.dfl.conv",)


def weight_quantizer(bits: int, scale: str, symmetric: bool, narrow_range: bool):
    """A Brevitas per-output-channel, float-scale weight quantizer with `bits` bits.

    symmetric: signed integers, zero point 0 (QCDQ: int8 storage, Clip to [-7, 7] at 4 bits
    with narrow range). asymmetric: unsigned integers with a per-channel zero point.
    scale: `minmax` uses each channel's absolute max (or min/max); `mse` searches the
    clipping range that minimises the weight's squared error; `output` starts from min-max
    and is refined later on calibration data (`ptq.output_aware_scale`).
    """
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant.scaled_int import Int8WeightPerChannelFloat, Int8WeightPerChannelFloatMSE
    from brevitas.quant.shifted_scaled_int import (
        ShiftedUint8WeightPerChannelFloat,
        ShiftedUint8WeightPerChannelFloatMSE,
    )

    base = {
        (True, "minmax"): Int8WeightPerChannelFloat,
        (True, "mse"): Int8WeightPerChannelFloatMSE,
        (False, "minmax"): ShiftedUint8WeightPerChannelFloat,
        (False, "mse"): ShiftedUint8WeightPerChannelFloatMSE,
    }[(bool(symmetric), "minmax" if scale == "output" else scale)]
    # PARAMETER_FROM_STATS: the scale is computed from the weight once, then kept as a
    # parameter. Calibrated methods (GPTQ, bias correction) change the weights on a fixed
    # grid, and the state dict carries the scale, so a reload is exact.
    return base.let(
        bit_width=int(bits), narrow_range=bool(narrow_range), scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS
    )


def round_scales_to_fp16(module) -> None:
    """Make a Brevitas layer's per-channel scales FP16 values, in place (fixing them from the weights first).

    Brevitas keeps the threshold (scale x the largest integer) as the parameter and divides it
    by that integer; an FP16 value times a small integer is exact in FP32, so the division
    gives the FP16 value back exactly.
    """
    with torch.no_grad():
        scale = module.quant_weight().scale.detach()
        threshold = module.weight_quant.tensor_quant.scaling_impl.value
        largest = torch.round(threshold / scale.view_as(threshold))
        threshold.copy_(fp16_exact(scale).view_as(threshold) * largest)


def round_biases_to_fp16(model: torch.nn.Module) -> None:
    """Round the biases of the quantized convs to FP16 values, in place (after any technique that moves them)."""
    with torch.no_grad():
        for module in conv_layers(model).values():
            if module.bias is not None and weight_bits(module) is not None:
                module.bias.copy_(module.bias.clamp(-FP16_MAX, FP16_MAX).half().float())


def weight_only_layer_map(quantizer) -> dict:
    """Brevitas layer map that replaces Conv2d by a QuantConv2d quantizing only its weight.

    Brevitas' default map also adds 8-bit input and 32-bit bias quantizers; we want neither.
    """
    import brevitas.nn as qnn

    options = {
        "weight_quant": quantizer,
        "input_quant": None,
        "output_quant": None,
        "bias_quant": None,
        "return_quant_tensor": False,
    }
    return {torch.nn.Conv2d: (qnn.QuantConv2d, options)}


def conv_layers(model: torch.nn.Module) -> dict:
    """Every Conv2d (float or already quantized) by its module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)}


def quantizable_layers(model: torch.nn.Module, keep_float=()) -> list[str]:
    """Names of the convs to quantize: all but the DFL conv and the `keep_float` globs."""
    patterns = (*ALWAYS_FLOAT, *keep_float)
    return [name for name in conv_layers(model) if not any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def layer_bit_widths(settings: dict, selected) -> dict:
    """{layer: bits} for the selected convs: `layer_bits` (mixed precision) where given, else weight_bits."""
    layer_bits = settings.get("layer_bits") or {}
    return {name: int(layer_bits.get(name, settings["weight_bits"])) for name in selected}


def quantize_weights(model: torch.nn.Module, settings: dict, initialise: bool = True) -> torch.nn.Module:
    """A copy of `model` (FP32, fused) whose selected convs carry fake-quantized weights: round to nearest.

    settings: a resolved recipe (yolo_w4.config); reads weight_bits, scale, symmetric,
    narrow_range, keep_float, group_size (set: groupwise.GroupQuantConv2d instead of Brevitas
    per-channel layers) and, for mixed precision or a bit budget, layer_bits {name: bits} (and
    with a budget layer_groups {name: group size, None per channel} and layer_symmetric {name: bool}:
    every conv group-wise). initialise False leaves
    Brevitas' scales to a state dict loaded next (load_quantized): fixing them from the FP weights
    quantizes every weight once more, seconds on YOLOv10m, for values the state dict replaces.
    """
    from brevitas.graph.quantize import layerwise_quantize

    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("quantize in FP32 and cast afterwards: the model passed in is not FP32")
    selected = quantizable_layers(model, settings["keep_float"])
    names = list(conv_layers(model))
    for glob in settings["keep_float"]:
        if not any(fnmatch.fnmatchcase(name, glob) for name in names):
            print(f"warning: keep_float {glob!r} matches no conv of this model (its convs are named like {names[0]!r})")
    if not selected:
        raise UserError(f"keep_float {settings['keep_float']} leaves no conv to quantize; name fewer layers")
    layer_bits = settings.get("layer_bits") or {}
    unknown = sorted(set(layer_bits) - set(selected))
    if unknown:
        raise UserError(f"layer_bits names layers that are not quantized convs: {', '.join(unknown[:5])}")
    quantized = copy.deepcopy(model)
    bits_of = layer_bit_widths(settings, selected)
    if settings.get("group_size") or settings.get("layer_groups"):
        groups = settings.get("layer_groups") or dict.fromkeys(selected, settings["group_size"])
        symmetric = settings.get("layer_symmetric") or dict.fromkeys(selected, settings["symmetric"])
        swap_in_groupwise(quantized, selected, bits_of, groups, settings["narrow_range"], settings["scale"], symmetric)
        round_biases_to_fp16(quantized)
        return quantized.eval()
    by_bits = {}
    for name, bits in bits_of.items():
        by_bits.setdefault(bits, []).append(name)
    for bits, names in sorted(by_bits.items()):  # one layerwise pass per bit width
        quantizer = weight_quantizer(bits, settings["scale"], settings["symmetric"], settings["narrow_range"])
        skipped = [name for name in conv_layers(quantized) if name not in names]
        quantized = layerwise_quantize(
            quantized, compute_layer_map=weight_only_layer_map(quantizer), name_blacklist=skipped
        )
    layers = conv_layers(quantized)  # one walk: a walk per layer costs seconds on YOLOv10m
    for name in selected:
        module = layers[name]
        if module.bias is None:  # bias correction needs one; zeros keep the output unchanged
            module.bias = torch.nn.Parameter(torch.zeros(module.out_channels))
        if initialise:
            round_scales_to_fp16(module)  # fix the scale parameter from the FP weights now
    if initialise:
        round_biases_to_fp16(quantized)
    return quantized.eval()


def weight_bits(module: torch.nn.Module) -> int | None:
    """A conv's weight bit width, None if float. Read from Brevitas' constant bit width where it has
    one: its proxy's `bit_width()` quantizes the whole weight again (seconds over YOLOv10m)."""
    quant = getattr(module, "weight_quant", None)
    if quant is None or not quant.is_quant_enabled:
        return None
    constant = getattr(getattr(quant, "tensor_quant", None), "msb_clamp_bit_width_impl", None)
    return int(constant() if constant is not None else quant.bit_width())


def quantization_summary(model: torch.nn.Module) -> dict:
    """Per-layer bit widths and the share of conv weights stored at 4 bits."""
    layers, total, four_bit = [], 0, 0
    for name, module in conv_layers(model).items():
        bits = weight_bits(module)
        count = module.weight.numel()
        total += count
        four_bit += count if bits == 4 else 0
        layer = {"name": name, "bits": bits, "weights": count, "shape": list(module.weight.shape)}
        if bits is not None:  # one scale per output channel, or per group (groupwise.GroupQuantConv2d)
            layer["scales"] = int(module.scale.numel()) if hasattr(module, "group_size") else module.out_channels
            layer["group_size"] = getattr(module, "group_size", None)
            zero_point = getattr(module, "zero_point", None)  # asymmetric groups: one per group, `bits` wide
            layer["zero_points"] = int(zero_point.numel()) if zero_point is not None else 0
        layers.append(layer)
    quantizable = sum(layer["weights"] for layer in layers if not layer["name"].endswith(".dfl.conv"))
    return {
        "layers": layers,
        "quantized_layers": sum(layer["bits"] is not None for layer in layers),
        "float_layers": sum(layer["bits"] is None for layer in layers),
        "weights_4bit_fraction": four_bit / quantizable if quantizable else 0.0,
        "conv_weights": total,
        "bits_per_weight": round(_bits_per_weight(layers, 16), 3),  # scales stored as FP16 (the deployable file)
    }


def _bits_per_weight(layers: list[dict], float_bits: int) -> float:
    """Stored bits per conv weight: integer bits plus a `float_bits` scale (and for asymmetric groups a
    zero point of the integers' width) per channel or group; float layers at float_bits.

    float_bits: the width scales and float weights are stored at (32 in an FP32 file, 16 in FP16).
    """
    stored = weights = 0
    for layer in layers:
        weights += layer["weights"]
        if layer["bits"] is None:
            stored += layer["weights"] * float_bits
        else:
            stored += stored_layer_bits(
                layer["weights"], layer["bits"], layer["scales"], layer["zero_points"], float_bits
            )
    return stored / weights


def stored_layer_bits(weights: int, bits: int, scales: int, zero_points: int, scale_bits: int = 16) -> int:
    """Bits one quantized conv weight takes stored: its integers, its scales, its zero points (each `bits` wide)."""
    return weights * bits + scales * scale_bits + zero_points * bits
