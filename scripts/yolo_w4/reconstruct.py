"""Learned rounding by block-wise output reconstruction (AdaRound, Nagel et al. 2020; BRECQ, Li et al. 2021).

Round-to-nearest and GPTQ decide each weight's rounding from one layer's statistics. Here
each weight may round down or up (`floor(w/s) + h`, h in [0, 1] through AdaRound's rectified
sigmoid, pushed to 0 or 1 by an annealed regulariser), and the choice is learned for a
whole stage (`model.model[i]`, e.g. a C3 block) at once: the quantized stage, fed the partly
quantized model's activations, is trained to reproduce the FP model's stage output (for the
detect head: the sigmoid of its final convs' outputs). The grid (per-channel scale, [-7, 7]
at 4 bits) never changes, so the result exports to QCDQ like round-to-nearest. With
`learn_bias`, each conv's float bias is tuned too. A stage keeps what it learned only where
its error on the calibration images went down; otherwise it stays at its start (the grid's
rounding, or GPTQ's with `adaround.start: gptq`).
"""

import contextlib
import random

import torch
import torch.nn.functional as F

from yolo_w4.ptq import StagedActivations, integer_bounds, stage_of
from yolo_w4.quantize import conv_layers

ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch


class LearnedRounding:
    """One conv's soft rounding h(V) on its fixed grid, initialised to reproduce the FP weight."""

    def __init__(self, conv, target: torch.Tensor, bits: int, narrow_range: bool, learn_bias: bool, start=None):
        """start: integers to begin at (e.g. GPTQ's, `adaround.start: gptq`) instead of the FP weight's
        position on the grid; each may move by one step, towards the FP weight where it can."""
        self.conv = conv
        bounds = integer_bounds(conv, bits, narrow_range)  # asymmetric groups: per weight, in GPTQ's layout
        self.qmin, self.qmax = (b.reshape_as(target) if isinstance(b, torch.Tensor) else b for b in bounds)
        self.scale = conv.quant_weight().scale.detach().expand_as(target)  # per channel or per group
        scaled = target / self.scale
        self.floor = torch.floor(scaled)
        rest = (scaled - self.floor).clamp(0.01, 0.99)
        if start is not None:  # begin (nearly) at the given integers: floor + 1 -> h ~ 1, floor -> h ~ 0
            up, down = start == self.floor + 1, start == self.floor
            self.floor = torch.where(up | down, self.floor, start)  # an integer further away: it, or one above
            rest = torch.where(up, torch.full_like(rest, 0.75), torch.full_like(rest, 0.25))
        self.v = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.bias = torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=learn_bias)

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def weight(self, hard: bool = False) -> torch.Tensor:
        h = (self.v >= 0).float() if hard else self.h()  # h >= 0.5 <=> v >= 0
        return torch.clamp(self.floor + h, self.qmin, self.qmax) * self.scale

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, self.weight(), self.bias, c.stride, c.padding, c.dilation, c.groups)

    def commit(self) -> int:
        """Write the hard rounding into the conv (an on-grid weight Brevitas reproduces); returns weights changed."""
        with torch.no_grad():
            before = self.conv.quant_weight().value.detach()
            self.conv.weight.copy_(self.weight(hard=True))
            self.conv.bias.copy_(self.bias.detach())
            return int((self.conv.quant_weight().value != before).sum())


@contextlib.contextmanager
def soft_forward(roundings: dict):
    """Let each conv run with its learned soft weight (plain F.conv2d) instead of Brevitas' RTN."""
    for rounding in roundings.values():
        rounding.conv.forward = rounding.forward
    try:
        yield
    finally:
        for rounding in roundings.values():
            del rounding.conv.forward


def current_integers(conv, start: str):
    """The integers a quantized conv holds now where learning starts from them (start "gptq"), else None."""
    if start == "rtn":
        return None
    with torch.no_grad():
        weight = conv.quant_weight()
        return torch.round(weight.value.detach() / weight.scale.detach().expand_as(weight.value))


def stage_batch(activations: StagedActivations, indices) -> torch.Tensor | list:
    """The current stage's inputs for several images, concatenated along the batch."""
    inputs = [activations.inputs(i) for i in indices]
    if isinstance(inputs[0], list):
        return [torch.cat(parts) for parts in zip(*inputs)]
    return torch.cat(inputs)


def stage_outputs(module, x, is_head: bool, layers: dict) -> list[torch.Tensor]:
    """What a stage is fitted on: its output, or for the head the sigmoid of its final convs' outputs.

    The head's final convs are those not wrapped in a Conv block (names not ending in `.conv`);
    the sigmoid weighs errors where scores are decided, not deep in the background logits.
    """
    if not is_head:
        return [module(x)]
    captured = []
    terminal = [m for name, m in layers.items() if not name.endswith(".conv")]
    handles = [m.register_forward_hook(lambda m, a, out: captured.append(torch.sigmoid(out))) for m in terminal]
    try:
        module(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def reconstruction_error(outputs, targets, indices) -> torch.Tensor:
    """Squared error summed over channels, averaged over images and positions (BRECQ's loss)."""
    return sum(
        (out - torch.cat([targets[i][k] for i in indices])).pow(2).sum(1).mean() for k, out in enumerate(outputs)
    )


def stage_error(activations: StagedActivations, targets, is_head: bool, layers: dict, chunk: int = 8) -> float:
    """The reconstruction error of the current stage as it is, over all calibration images."""
    module, count, total = activations.module, len(targets), 0.0
    with torch.no_grad():
        for start in range(0, count, chunk):
            indices = range(start, min(start + chunk, count))
            outputs = stage_outputs(module, stage_batch(activations, indices), is_head, layers)
            total += float(reconstruction_error(outputs, targets, indices)) * len(indices)
    return total / count


def apply_adaround(
    fp_model,
    q_model,
    calibration,
    *,
    bits: dict,
    narrow_range: bool,
    iterations: int,
    batch: int,
    lr: float,
    learn_bias: bool,
    bias_lr: float = 1e-4,
    weight: float = 0.01,
    seed: int = 0,
    stages=None,
    start: str = "rtn",
) -> dict:
    """AdaRound (`method: adaround`): learn every quantized conv's rounding, stage by stage (or only `stages`).

    bits: {layer name: bits}; bias_lr, weight (rounding regulariser) and seed are fixed by the
    method, the rest come from the recipe's `adaround` settings. start: "rtn" begins at the FP
    weights; "gptq" at the integers `q_model` holds now (recipe.py runs GPTQ first). Returns
    per-layer records.
    """
    generator = random.Random(seed)
    fp_layers = conv_layers(fp_model)
    q_layers = {n: m for n, m in conv_layers(q_model).items() if hasattr(m, "weight_quant")}
    q_acts, fp_acts = StagedActivations(q_model, calibration), StagedActivations(fp_model, calibration)
    count, records, last = len(calibration), {}, len(q_model.model) - 1
    for stage in range(len(q_model.model)):
        layers = {n: m for n, m in q_layers.items() if stage_of(n) == stage}
        if layers and (stages is None or stage in stages):
            is_head = stage == last
            fp_stage_layers = {n: fp_layers[n] for n in layers}
            with torch.no_grad():
                targets = [
                    stage_outputs(fp_acts.module, fp_acts.inputs(i), is_head, fp_stage_layers) for i in range(count)
                ]
                start_error = stage_error(q_acts, targets, is_head, layers)
            roundings = {
                n: LearnedRounding(
                    m, fp_layers[n].weight.detach(), bits[n], narrow_range, learn_bias, current_integers(m, start)
                )
                for n, m in layers.items()
            }
            groups = [{"params": [r.v for r in roundings.values()], "lr": lr}]
            if learn_bias:
                groups.append({"params": [r.bias for r in roundings.values()], "lr": bias_lr})
            optimiser = torch.optim.Adam(groups)
            warmup = int(0.2 * iterations)
            with soft_forward(roundings):
                for step in range(iterations):
                    indices = generator.sample(range(count), min(batch, count))
                    outputs = stage_outputs(q_acts.module, stage_batch(q_acts, indices), is_head, layers)
                    loss = reconstruction_error(outputs, targets, indices)
                    if step >= warmup:  # anneal beta 20 -> 2: first free, then pushed to 0/1
                        beta = 20 + (2 - 20) * (step - warmup) / max(1, iterations - warmup)
                        loss = loss + weight * sum(r.regulariser(beta) for r in roundings.values())
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
            before = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in layers.items()}
            for name, learned in roundings.items():
                records[name] = {"stage": stage, "weights_changed": learned.commit()}
            error = stage_error(q_acts, targets, is_head, layers)
            kept = error < start_error  # a stage keeps what it learned only where its error went down
            if not kept:
                with torch.no_grad():
                    for name, (kept_weight, kept_bias) in before.items():
                        layers[name].weight.copy_(kept_weight)
                        layers[name].bias.copy_(kept_bias)
                        records[name]["weights_changed"] = 0
            for name in layers:
                records[name].update(
                    stage_error_start=round(start_error, 6), stage_error=round(min(error, start_error), 6), kept=kept
                )
        fp_acts.run(advance=True)
        q_acts.run(advance=True)
    return records
