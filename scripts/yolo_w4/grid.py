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


def round_to_grid(weight: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round to nearest on the grid scale * [qmin, qmax] (scale broadcast over the weight)."""
    return torch.clamp(torch.round(weight / scale), qmin, qmax) * scale


def fp16_exact(scale: torch.Tensor) -> torch.Tensor:
    """Scales rounded to FP16 values, at least FP16's smallest normal (FP32 tensor)."""
    return scale.clamp(FP16_TINY, FP16_MAX).half().float()


def group_scales(weight: torch.Tensor, group_size: int, bits: int, narrow_range: bool, method: str) -> torch.Tensor:
    """(out, groups) scales of a conv weight: max |w| / qmax per group (minmax), or the clipped max
    with the least squared weight error (mse); every scale an FP16 value (`fp16_exact`)."""
    qmin, qmax = integer_range(bits, narrow_range)
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    width = rows.shape[1]
    groups = -(-width // group_size)
    padded = F.pad(rows, (0, groups * group_size - width)).view(rows.shape[0], groups, group_size)
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
