"""Data-free bias correction from the checkpoint's own BatchNorm statistics (Nagel et al., 2019).

A conv fed by an Ultralytics `Conv` block (conv -> BN -> SiLU) sees, per input channel,
z ~ N(beta, gamma^2) after BN (the BN output over the training data), hence E[x] =
E[SiLU(z)], computed by Gauss-Hermite quadrature. Concatenations of such blocks carry their
means along. Then the expected output error of 4-bit weights is (W - Q) . E[x] per output
channel, and the bias absorbs it, without a single image. Convs whose input mean cannot be
derived this way (split/chunk, residual sums, pooling, the image itself) are left alone.
"""

import numpy as np
import torch

NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(40)  # probabilists' Hermite: E over N(0, 1)


def expected_activation(beta: torch.Tensor, gamma: torch.Tensor, activation) -> torch.Tensor:
    """E[act(z)] for z ~ N(beta, gamma^2), per channel."""
    nodes = torch.as_tensor(NODES, dtype=torch.float64, device=beta.device)
    weights = torch.as_tensor(WEIGHTS / WEIGHTS.sum(), dtype=torch.float64, device=beta.device)
    z = beta.double().unsqueeze(1) + gamma.double().abs().unsqueeze(1) * nodes  # (C, K)
    return (activation(z) * weights).sum(1).float()


def input_means(unfused_model, imgsz: int = 640) -> dict:
    """{inner conv name: E[input] per channel} for convs whose input mean BN statistics give."""
    from ultralytics.nn.modules import Concat, Conv

    produced, concats, inputs, keep = {}, {}, {}, []
    names = {module: name for name, module in unfused_model.named_modules()}
    handles = []
    for module in unfused_model.modules():
        if isinstance(module, Conv) and hasattr(module, "bn"):

            def conv_hook(m, args, output):
                keep.append(output)
                produced[id(output)] = expected_activation(m.bn.bias, m.bn.weight, m.act)

            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, Concat):

            def concat_hook(m, args, output):
                keep.extend([output, *args[0]])  # alive until the end: ids must stay unique
                concats[id(output)] = [id(t) for t in args[0]]

            handles.append(module.register_forward_hook(concat_hook))
        elif isinstance(module, torch.nn.Conv2d):

            def input_hook(m, args):
                keep.append(args[0])
                inputs[names[m]] = id(args[0])

            handles.append(module.register_forward_pre_hook(input_hook))
    try:
        with torch.no_grad():
            unfused_model(torch.zeros(1, 3, imgsz, imgsz, device=next(unfused_model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()

    def mean_of(tensor_id):
        if tensor_id in produced:
            return produced[tensor_id]
        if tensor_id in concats:
            parts = [mean_of(part) for part in concats[tensor_id]]
            return torch.cat(parts) if all(p is not None for p in parts) else None
        return None

    return {name: mean for name, tensor_id in inputs.items() if (mean := mean_of(tensor_id)) is not None}


def apply_bn_bias_correction(q_model, fp_model, unfused_model, *, imgsz: int) -> dict:
    """Data-free bias correction (`bias_correction: bn`): shift each covered quantized conv's bias by
    (W - Q) . E[x], E[x] from the unfused checkpoint's BatchNorm statistics; returns {name: max |shift|}."""
    return bias_shifts(q_model, fp_model, input_means(unfused_model, imgsz))


def bias_shifts(q_model, fp_model, means: dict) -> dict:
    """Shift each quantized conv with a known input mean by (W - Q) . E[x]; returns {name: max |shift|}."""
    from yolo_w4.quantize import conv_layers

    fp_layers, shifts = conv_layers(fp_model), {}
    for name, module in conv_layers(q_model).items():
        if not hasattr(module, "weight_quant") or name not in means:
            continue
        mean = means[name]
        if mean.numel() != module.in_channels:
            continue
        with torch.no_grad():
            error = fp_layers[name].weight - module.quant_weight().value  # (O, C/G, kh, kw)
            groups = module.groups
            per_input = error.sum((2, 3))  # padding ignored: interior positions dominate
            mean_grouped = mean.view(groups, -1)  # (G, C/G)
            shift = (per_input.view(groups, -1, per_input.shape[1]) @ mean_grouped.unsqueeze(-1)).reshape(-1)
            module.bias.add_(shift)
        shifts[name] = float(shift.abs().max())
    return shifts
