"""Group-wise weight quantization: one scale per `group_size` weights of each output channel.

A per-channel 4-bit grid spends one scale on a whole output channel (in x kh x kw weights,
up to thousands); a few large weights then stretch it for all. LLM W4A16 recipes give each
run of 32-128 weights along the reduction dimension its own scale instead, and ONNX opset
21 says the same thing directly: a `DequantizeLinear` with `axis=1, block_size=group_size`
over the 2-D `[out, in*kh*kw]` integers (export.export_qcdq writes it).

Brevitas' QCDQ exporter refuses per-group scales, so group-wise convs are this module, not
Brevitas layers; it offers the part of Brevitas' interface the PTQ code reads
(`weight_quant.bit_width()`, `quant_weight().value/.scale`), with `.scale` per weight.
A layer whose reduction size is not above the group size gets one group: per channel.
Scales are FP16 values, stored as FP16 (16 bits per group: 4.5 bits per weight at 32).
Asymmetric groups (`symmetric: false`) add a zero point per group: unsigned integers
0..15 (UINT4) serve each group's own [min, max], 4 bits more per group (4.625 at 32).
The last group of a row may be shorter (ceil groups), as blocked DequantizeLinear allows.
"""

from collections import namedtuple

import torch

from yolo_w4.grid import asymmetric_group_grid, group_scales, integer_range, per_weight, unsigned_range

QuantWeight = namedtuple("QuantWeight", "value scale")


class GroupQuantProxy:
    """What our PTQ code asks of a Brevitas weight-quant proxy: the bit width, and that it is on."""

    is_quant_enabled = True

    def __init__(self, bits: int):
        self.bits = bits

    def bit_width(self) -> torch.Tensor:
        return torch.tensor(float(self.bits))


class GroupQuantConv2d(torch.nn.Conv2d):
    """A Conv2d with fake-quantized group-wise weights: integers in [qmin, qmax] times their group's scale."""

    def __init__(
        self, conv: torch.nn.Conv2d, bits: int, group_size: int, narrow_range: bool, scale: str, symmetric: bool = True
    ):
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            self.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(self.bias))
        self.bits, self.narrow_range = bits, narrow_range
        self.group_size = min(group_size, self.weight[0].numel())  # reduction size <= group: per channel
        if symmetric:
            self.qmin, self.qmax = integer_range(bits, narrow_range)
            self.register_buffer("scale", group_scales(self.weight, self.group_size, bits, narrow_range, scale))
            self.zero_point = None
        else:  # stored integers 0 .. 2^bits - 1, value = (stored - zero point) x scale
            self.qmin, self.qmax = unsigned_range(bits)
            scales, zero_points = asymmetric_group_grid(self.weight, self.group_size, bits, scale)
            self.register_buffer("scale", scales)
            self.register_buffer("zero_point", zero_points)
        self.weight_quant = GroupQuantProxy(bits)

    def per_weight(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group values (out, groups) repeated to every weight, shaped like the weight."""
        return per_weight(values, self.group_size, self.weight[0].numel()).reshape(self.weight.shape)

    def element_scale(self) -> torch.Tensor:
        """The scale of every weight, shaped like the weight."""
        return self.per_weight(self.scale)

    def integer_bounds(self):
        """(lowest, highest) integer of every weight, value = integer x scale: [qmin, qmax] (symmetric), or
        tensors [-zero point, 2^bits - 1 - zero point] per weight (asymmetric). GPTQ and AdaRound round within them."""
        if self.zero_point is None:
            return self.qmin, self.qmax
        zero = self.per_weight(self.zero_point)
        return self.qmin - zero, self.qmax - zero

    def integers(self) -> torch.Tensor:
        """Integers centred on zero (value = integer x scale); the stored ones add the zero point (export.py)."""
        return torch.clamp(torch.round(self.weight / self.element_scale()), *self.integer_bounds())

    def quant_weight(self) -> QuantWeight:
        scale = self.element_scale()
        return QuantWeight(self.integers() * scale, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quant_weight().value, self.bias)


def groupwise_layers(model: torch.nn.Module) -> dict:
    """{name: GroupQuantConv2d} of a model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GroupQuantConv2d)}


def swap_in_groupwise(
    model: torch.nn.Module, names, bits_of: dict, groups: dict, narrow_range: bool, scale: str, symmetric: dict
):
    """Replace the convs `names` of `model` (in place) by GroupQuantConv2d with bits_of[name] bits,
    groups[name] weights per scale (None: one scale per output channel), symmetric[name] or a zero point."""
    for name in names:
        conv = model.get_submodule(name)
        size = groups[name] or conv.weight[0].numel()
        model.set_submodule(name, GroupQuantConv2d(conv, bits_of[name], size, narrow_range, scale, symmetric[name]))
    return model
