"""The grid every weight is rounded to: integer ranges, rounding, scale search, FP16 scales.

The bottom of the quantization core. Per-channel layers (Brevitas, quantize.py), group-wise
layers (groupwise.py) and every PTQ technique (ptq.py, reconstruct.py, sensitivity.py) take
their grid from here, so none of them reaches into another for it.
"""

import torch
import torch.nn.functional as F

# Scales and the biases of quantized convs are FP16 values (held in FP32 tensors): the files store
# them in 16 bits without changing an output, and an FP16 runtime uses exactly the calibrated ones.
FP16_TINY, FP16_MAX = 2.0**-14, 65504.0  # smallest normal, largest finite FP16 value
MSE_RATIOS = torch.linspace(0.3, 1.0, 71)  # clipping ratios of the max searched by `scale: mse`


def integer_range(bits: int, narrow_range: bool) -> tuple[int, int]:
    high = 2 ** (bits - 1) - 1
    return (-high if narrow_range else -high - 1), high


def unsigned_range(bits: int) -> tuple[int, int]:
    """The stored integers of an asymmetric grid: 0 .. 2^bits - 1 (all 16 at 4 bits), a zero point per group."""
    return 0, 2**bits - 1


def round_to_grid(weight: torch.Tensor, scale: torch.Tensor, qmin, qmax) -> torch.Tensor:
    """Round to nearest on the grid scale * [qmin, qmax] (scale broadcast over the weight).

    qmin, qmax: integers, or tensors like the weight (asymmetric groups: -zero point .. 15 - zero point)."""
    return torch.clamp(torch.round(weight / scale), qmin, qmax) * scale


def fp16_exact(scale: torch.Tensor) -> torch.Tensor:
    """Scales rounded to FP16 values, at least FP16's smallest normal (FP32 tensor)."""
    return scale.clamp(FP16_TINY, FP16_MAX).half().float()


def grouped_rows(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """A conv weight as (out, groups, group_size) FP32 runs of its reduction, the last zero-padded."""
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    width = rows.shape[1]
    groups = -(-width // group_size)
    return F.pad(rows, (0, groups * group_size - width)).view(rows.shape[0], groups, group_size)


def per_weight(values: torch.Tensor, group_size: int, width: int) -> torch.Tensor:
    """Per-group values (out, groups) repeated to each of a row's `width` weights: (out, width)."""
    return values.repeat_interleave(group_size, dim=1)[:, :width]


def group_scales(weight: torch.Tensor, group_size: int, bits: int, narrow_range: bool, method: str) -> torch.Tensor:
    """(out, groups) scales of a conv weight: max |w| / qmax per group (minmax), or the clipped max
    with the least squared weight error (mse); every scale an FP16 value (`fp16_exact`)."""
    qmin, qmax = integer_range(bits, narrow_range)
    padded = grouped_rows(weight, group_size)
    amax = padded.abs().amax(-1).clamp_min(1e-8)
    if method == "minmax":
        return fp16_exact(amax / qmax)
    best_error = torch.full_like(amax, float("inf"))
    best = fp16_exact(amax / qmax)
    for ratio in MSE_RATIOS.to(weight.device):
        scale = fp16_exact(amax * ratio / qmax)
        error = (padded - round_to_grid(padded, scale.unsqueeze(-1), qmin, qmax)).pow(2).sum(-1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best = torch.where(better, scale, best)
    return best


def asymmetric_group_grid(weight: torch.Tensor, group_size: int, bits: int, method: str):
    """(scales, zero points), each (out, groups), of an asymmetric group-wise grid (`symmetric: false`).

    Each group's range [min, max] (widened to hold 0, so the zero point is one of the stored
    integers) is split into 2^bits - 1 steps: all 16 integers at 4 bits serve the group's own
    extremes, where a symmetric grid spends half its integers on the side of zero with the
    smaller extreme. mse shrinks the range towards 0 by the ratio with the least squared weight
    error. Zero points are integers in [0, 2^bits - 1] (float tensors), scales FP16 values.
    """
    _, top = unsigned_range(bits)
    padded = grouped_rows(weight, group_size)
    low, high = padded.amin(-1).clamp(max=0), padded.amax(-1).clamp(min=0)
    spread = (high - low).clamp_min(1e-8)
    ratios = MSE_RATIOS.to(weight.device) if method == "mse" else torch.ones(1, device=weight.device)
    best_error = torch.full_like(spread, float("inf"))
    best_scale, best_zero = torch.zeros_like(spread), torch.zeros_like(spread)
    for ratio in ratios:
        scale = fp16_exact(spread * ratio / top)
        zero = torch.clamp(torch.round(-low * ratio / scale), 0, top)
        grid = round_to_grid(padded, scale.unsqueeze(-1), -zero.unsqueeze(-1), (top - zero).unsqueeze(-1))
        error = (padded - grid).pow(2).sum(-1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale, best_zero = torch.where(better, scale, best_scale), torch.where(better, zero, best_zero)
    return best_scale, best_zero
