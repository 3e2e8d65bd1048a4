"""Calibrated weight PTQ, stage by stage: output-aware scales, GPTQ, upstream compensation, bias correction.

One `apply_*` function per technique, each changing one conv (`ConvFit`) in place with keyword
options; `calibrate` runs the ones a recipe names, in order, on every conv (recipe.py composes).

The techniques need statistics of each conv's *input* in the partly quantized model: GPTQ the
second moment H = E[x xᵀ] of its im2col patches, bias correction their mean E[x]. The
model is processed one top-level stage (`model.model[i]`) at a time: the calibration
images' activations are kept at the current stage (`StagedActivations`), the stage runs
once to collect its convs' input statistics, its convs are quantized (GPTQ) and corrected,
and it runs again to hand the next stage already quantized, corrected outputs. Each image
thus passes through the network about twice in all.

With `compensate_upstream` (asymmetric calibration, as in GPTAQ, Li et al. 2025), the FP
model runs beside the quantized one and each conv is fitted, one at a time in execution
order, to reproduce the FP model's output from the *quantized* model's input: the error
already made upstream is compensated instead of carried on.
"""

import contextlib

import torch
import torch.nn.functional as F

from yolo_w4.grid import integer_range, round_to_grid
from yolo_w4.quantize import conv_layers, round_scales_to_fp16


class InputStats:
    """Running E[x] (and E[x xᵀ]) of a conv's im2col patches, one block per conv group."""

    def __init__(self, conv: torch.nn.Conv2d, second_moment: bool):
        self.conv = conv
        self.groups = conv.groups
        self.width = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        self.device = conv.weight.device  # statistics live where the model runs (float64 on CPU or CUDA)
        self.sum = torch.zeros(self.groups, self.width, dtype=torch.float64, device=self.device)
        self.gram = (
            torch.zeros(self.groups, self.width, self.width, dtype=torch.float64, device=self.device)
            if second_moment
            else None
        )
        self.count = 0
        self.cross = self.reference_sum = None  # E[x x_fpᵀ], E[x_fp]: paired statistics (add_pair)

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """im2col patches as (groups, width, batch * positions)."""
        conv = self.conv
        cols = F.unfold(x.float(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        batch, _, positions = cols.shape
        cols = cols.view(batch, self.groups, self.width, positions).permute(1, 2, 0, 3)
        return cols.reshape(self.groups, self.width, batch * positions)

    def add(self, x: torch.Tensor) -> None:
        self._accumulate(self._columns(x))

    def _accumulate(self, cols: torch.Tensor) -> None:
        self.sum += cols.sum(-1, dtype=torch.float64)
        if self.gram is not None:  # float32 products (fast), float64 running sum
            self.gram += torch.bmm(cols, cols.transpose(1, 2)).double()
        self.count += cols.shape[-1]

    def add_pair(self, x: torch.Tensor, reference: torch.Tensor) -> None:
        """Add the quantized model's input x and the FP model's input `reference` for the same image."""
        cols, ref = self._columns(x), self._columns(reference)
        self._accumulate(cols)
        if self.cross is None:
            self.cross = torch.zeros(self.groups, self.width, self.width, dtype=torch.float64, device=self.device)
            self.reference_sum = torch.zeros(self.groups, self.width, dtype=torch.float64, device=self.device)
        self.cross += torch.bmm(cols, ref.transpose(1, 2)).double()
        self.reference_sum += ref.sum(-1, dtype=torch.float64)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    @property
    def hessian(self) -> torch.Tensor:
        return self.gram / self.count

    @property
    def reference_mean(self) -> torch.Tensor:
        return self.reference_sum / self.count

    def fp_target(self, weight: torch.Tensor, damp: float) -> torch.Tensor:
        """The weight that best maps this conv's quantized-model inputs to the FP model's outputs.

        argmin_V E||W x_fp - V x||² = W E[x_fp xᵀ] E[x xᵀ]⁻¹, ridge-regularised towards W with
        `damp` x the mean Hessian diagonal, so errors made upstream are compensated here.
        weight (G, O, n) -> (G, O, n).
        """
        H = self.hessian
        ridge = damp * torch.diagonal(H, dim1=1, dim2=2).mean(1).clamp_min(1e-12).view(-1, 1, 1)
        eye = torch.eye(self.width, dtype=H.dtype, device=H.device)
        W = weight.double()
        rhs = W @ self.cross.transpose(1, 2) / self.count + W * ridge  # (G, O, n)
        return torch.linalg.solve(H + ridge * eye, rhs.transpose(1, 2)).transpose(1, 2).float()


def stage_of(name: str) -> int:
    """`model.12.cv1.conv` -> 12: the top-level stage a conv belongs to."""
    return int(name.split(".")[1])


class StagedActivations:
    """Every calibration image's activations at the current stage of a YOLO Sequential.

    Ultralytics' DetectionModel and our YOLOv5 model run `model.model` in order, each stage
    reading the previous output or saved earlier outputs (`f` indices; `save` says which
    to keep), so the forward pass can be advanced one stage at a time.
    """

    def __init__(self, model, images):
        self.model = model
        self.states = [(image, []) for image in images]
        self.stage = 0

    @property
    def module(self):
        """The current stage."""
        return self.model.model[self.stage]

    @staticmethod
    def _read(module, x, saved):
        """What `module` reads: the last output `x`, or saved ones (its `f` indices)."""
        f = module.f
        if f == -1:
            return x
        return saved[f] if isinstance(f, int) else [x if j == -1 else saved[j] for j in f]

    def inputs(self, index: int):
        """What the current stage reads for image `index`: the last output, or saved ones (`f`)."""
        x, saved = self.states[index]
        return self._read(self.module, x, saved)

    def head_inputs(self, index: int):
        """What the last stage (the head) reads for image `index`, the model as it is now run from the
        current stage on (nothing kept): a layer's effect on the head costs only the stages after it."""
        x, saved = self.states[index]
        saved = list(saved)
        with torch.no_grad():
            for module in self.model.model[self.stage : -1]:
                x = module(self._read(module, x, saved))
                saved.append(x if module.i in self.model.save else None)
        return self._read(self.model.model[-1], x, saved)

    def run(self, advance: bool) -> None:
        """Run the current stage on every image; with advance, keep its outputs and move on."""
        module = self.module
        with torch.no_grad():
            for index, (_, saved) in enumerate(self.states):
                output = module(self.inputs(index))
                if advance:
                    saved.append(output if module.i in self.model.save else None)
                    self.states[index] = (output, saved)
        if advance:
            self.stage += 1


def collect_input_stats(model, layers: dict, stage: int, calibration, second_moment: bool) -> dict:
    """Input statistics of `layers` (all in `stage`) over the calibration images, model as it is."""
    activations = calibration if isinstance(calibration, StagedActivations) else StagedActivations(model, calibration)
    while activations.stage < stage:
        activations.run(advance=True)
    stats = {name: InputStats(conv, second_moment) for name, conv in layers.items()}
    handles = [conv.register_forward_pre_hook(lambda m, args, s=stats[n]: s.add(args[0])) for n, conv in layers.items()]
    try:
        activations.run(advance=False)
    finally:
        for handle in handles:
            handle.remove()
    return stats


class _Captured(Exception):
    """Raised by a pre-hook once every conv being fitted has its input: the rest of the stage is not needed."""


def collect_paired_stats(fp_activations, q_activations, fp_layers: dict, q_layers: dict, whole_stage=False) -> dict:
    """Input statistics of `q_layers` with the FP model's inputs to the same convs, image by image.

    Both activation sets must stand at the stage holding the layers; neither advances. Each
    stage forward stops as soon as every layer has its input (what follows in the stage cannot
    change it): upstream compensation fits a stage's convs one at a time, so this halves its
    forward passes. whole_stage: run the stages to the end anyway (the statistics are the same).
    """
    stats = {name: InputStats(conv, second_moment=True) for name, conv in q_layers.items()}
    reference, seen = {}, set()

    def keep_reference(name, x):
        reference[name] = x
        if len(reference) == len(q_layers) and not whole_stage:
            raise _Captured

    def add_pair(name, x):
        stats[name].add_pair(x, reference[name])
        seen.add(name)
        if len(seen) == len(q_layers) and not whole_stage:
            raise _Captured

    handles = [
        fp_layers[n].register_forward_pre_hook(lambda m, args, n=n: keep_reference(n, args[0])) for n in q_layers
    ]
    handles += [
        conv.register_forward_pre_hook(lambda m, args, n=n: add_pair(n, args[0])) for n, conv in q_layers.items()
    ]
    try:
        with torch.no_grad():
            for index in range(len(q_activations.states)):
                reference.clear()
                seen.clear()
                for activations in (fp_activations, q_activations):
                    with contextlib.suppress(_Captured):
                        activations.module(activations.inputs(index))
    finally:
        for handle in handles:
            handle.remove()
    return stats


def gptq_inverse(hessian, damp: float = 0.01, act_order: bool = True):
    """What GPTQ needs of a layer's Hessian (G, n, n), the same for every grid it rounds to: the
    column order, the dead columns (never seen a non-zero input) and the upper Cholesky factor of
    the damped inverse in that order. The bit budget rounds one layer in many formats on one of these."""
    H = hessian.double().clone()
    groups, width, _ = H.shape
    diagonal = torch.diagonal(H, dim1=1, dim2=2)
    dead = diagonal == 0
    diagonal[dead] = 1.0
    if act_order:
        perm = torch.argsort(diagonal, dim=1, descending=True)
    else:
        perm = torch.arange(width, device=H.device).expand(groups, width)
    H = H.gather(1, perm.unsqueeze(2).expand_as(H)).gather(2, perm.unsqueeze(1).expand_as(H))
    H += (
        damp
        * torch.diagonal(H, dim1=1, dim2=2).mean(1).view(groups, 1, 1)
        * torch.eye(width, dtype=H.dtype, device=H.device)
    )
    return perm, dead, torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def gptq(
    weight, hessian, scale, qmin, qmax, damp: float = 0.01, act_order: bool = True, block: int = 128, inverse=None
):
    """GPTQ (Frantar et al. 2023) for G independent groups at once.

    weight (G, O, n), hessian (G, n, n), scale (G, O) per channel or (G, O, n) per weight (group-wise
    scales, fixed before the columns are reordered: "static groups"): returns the quantized weight
    (G, O, n), every value on its own grid scale * [qmin, qmax]. Columns are quantized in order of
    decreasing Hessian diagonal (act_order); each column's rounding error is spread over the
    columns not yet quantized, weighted by the inverse Hessian, so the layer's output error
    E||(W - Q) x||² is what is minimised, not the weight error. qmin, qmax: integers, or (G, O, n)
    tensors (asymmetric groups: each weight's own bounds, reordered with its column).
    inverse: `gptq_inverse(hessian, damp, act_order)` when already computed (then hessian is unread).
    """
    perm, dead, Hinv = inverse if inverse is not None else gptq_inverse(hessian, damp, act_order)
    W = weight.double().clone()
    width = W.shape[2]
    S = scale.double()
    S = (S.unsqueeze(-1) if S.dim() == 2 else S).expand_as(W)  # (G, O, n): each weight's scale
    W.masked_fill_(dead.unsqueeze(1), 0.0)
    W = W.gather(2, perm.unsqueeze(1).expand_as(W))
    S = S.gather(2, perm.unsqueeze(1).expand_as(S))
    bounds = [
        b.double().gather(2, perm.unsqueeze(1).expand_as(W)) if isinstance(b, torch.Tensor) else b for b in (qmin, qmax)
    ]
    Q = torch.zeros_like(W)
    for start in range(0, width, block):
        end = min(start + block, width)
        W1 = W[:, :, start:end].clone()
        errors = torch.zeros_like(W1)
        Hinv1 = Hinv[:, start:end, start:end]
        for i in range(end - start):
            column = W1[:, :, i]
            low, high = (b[:, :, start + i] if isinstance(b, torch.Tensor) else b for b in bounds)
            q = round_to_grid(column, S[:, :, start + i], low, high)
            Q[:, :, start + i] = q
            error = (column - q) / Hinv1[:, i, i].unsqueeze(1)
            W1[:, :, i:] -= error.unsqueeze(2) * Hinv1[:, i, i:].unsqueeze(1)
            errors[:, :, i] = error
        W[:, :, end:] -= errors @ Hinv[:, start:end, end:]
    unpermute = torch.argsort(perm, dim=1)
    return Q.gather(2, unpermute.unsqueeze(1).expand_as(Q)).float()


def output_aware_scale(weight, hessian, scale, qmin: int, qmax: int, ratios=None) -> torch.Tensor:
    """Per-channel clipping ratio (of the min-max scale) minimising the layer's output error.

    For each candidate ratio a, round to nearest with scale a*s and measure eᵀ H e, e = w - q:
    the squared output error on calibration inputs, not the weight error (which min-max and
    MSE scales minimise). weight (G, O, n), hessian (G, n, n), scale (G, O) -> ratio (G, O).
    """
    ratios = torch.linspace(0.5, 1.0, 21, device=scale.device) if ratios is None else ratios.to(scale.device)
    W, H = weight.float(), hessian.float()
    errors = []
    for ratio in ratios:
        s = (scale * ratio).unsqueeze(-1)
        E = W - round_to_grid(W, s, qmin, qmax)
        errors.append(torch.einsum("goi,gij,goj->go", E, H, E))
    best = torch.stack(errors).argmin(0)
    return ratios[best]


def _grouped(tensor: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, C/G, kh, kw) -> (G, O/G, C/G*kh*kw)."""
    return tensor.reshape(groups, tensor.shape[0] // groups, -1)


def execution_order(activations: StagedActivations, layers: dict) -> list[str]:
    """Names of `layers` (all in the current stage) in the order the stage runs them."""
    order = []
    handles = [m.register_forward_pre_hook(lambda m, a, n=n: order.append(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            activations.module(activations.inputs(0))
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def integer_bounds(module, bits: int, narrow_range: bool):
    """The integers a quantized conv's weights may take, as `round_to_grid` wants them, in GPTQ's (G, O, n)
    layout: [qmin, qmax], or per weight for asymmetric groups (groupwise.GroupQuantConv2d.integer_bounds)."""
    if not hasattr(module, "integer_bounds"):
        return integer_range(bits, narrow_range)
    low, high = module.integer_bounds()
    if isinstance(low, torch.Tensor):
        return _grouped(low, module.groups), _grouped(high, module.groups)
    return low, high


class ConvFit:
    """One quantized conv being calibrated: its input statistics, its grid and what it is fitted to.

    The `apply_*` techniques below each change it in place, in the order the recipe lists them.
    """

    def __init__(self, module, fp_conv, stats: InputStats, bits: int, narrow_range: bool):
        self.module, self.stats = module, stats
        self.groups = module.groups
        self.weight_fp = _grouped(fp_conv.weight.detach(), self.groups)  # (G, O, n): the FP weights
        self.goal = self.weight_fp  # what GPTQ rounds (apply_upstream_compensation moves it)
        self.fp_mean = stats.mean  # E[x] of the FP model's input (bias correction's reference)
        self.qmin, self.qmax = integer_bounds(module, bits, narrow_range)
        self.before = module.quant_weight().value.detach()
        self.record = {"weights_changed": 0, "bias_shift_max": 0.0, "clip_ratio_mean": 1.0}

    def scale(self) -> torch.Tensor:
        """The current scale of every weight, (G, O, n): per channel (Brevitas) or per group (groupwise.py)."""
        scale = self.module.quant_weight().scale.detach()
        return _grouped(scale.expand_as(self.module.weight), self.groups)

    def finish(self) -> dict:
        self.record["weights_changed"] = int((self.module.quant_weight().value.detach() != self.before).sum())
        return self.record


def apply_output_scale(fit: ConvFit) -> None:
    """Per-channel clipping searched for the least output error on calibration inputs (`scale: output`)."""
    ratio = output_aware_scale(fit.weight_fp, fit.stats.hessian, fit.scale()[..., 0], fit.qmin, fit.qmax)
    threshold = fit.module.weight_quant.tensor_quant.scaling_impl.value  # scale = threshold / qmax
    threshold.mul_(ratio.reshape(threshold.shape))
    round_scales_to_fp16(fit.module)
    fit.record["clip_ratio_mean"] = float(ratio.mean())


def apply_upstream_compensation(fit: ConvFit, *, ridge: float) -> None:
    """Fit to the FP model's output from the quantized model's input (`compensate_upstream`).

    Needs paired statistics (`calibrate(paired=True)`); moves GPTQ's goal and bias correction's reference.
    """
    fit.goal = fit.stats.fp_target(fit.weight_fp, ridge)
    fit.fp_mean = fit.stats.reference_mean


def apply_gptq(fit: ConvFit, *, damp: float, act_order: bool) -> None:
    """GPTQ rounding of the goal weights on the current grid (`method: gptq`)."""
    new = gptq(fit.goal, fit.stats.hessian, fit.scale(), fit.qmin, fit.qmax, damp, act_order)
    fit.module.weight.copy_(new.reshape_as(fit.module.weight))


def apply_bias_correction(fit: ConvFit) -> None:
    """Shift the bias by the mean output error E[W x_fp] - E[Q x] (`bias_correction: empirical`)."""
    quantized = _grouped(fit.module.quant_weight().value.detach(), fit.groups)
    expected = fit.weight_fp.double() @ fit.fp_mean.unsqueeze(-1)
    actual = quantized.double() @ fit.stats.mean.unsqueeze(-1)
    shift = (expected - actual).reshape(-1).float()
    fit.module.bias.add_(shift)
    fit.record["bias_shift_max"] = float(shift.abs().max())


def calibrate(
    fp_model, q_model, calibration, *, bits: dict, narrow_range: bool, techniques: list, hessian: bool, paired: bool
) -> dict:
    """Run `techniques` (apply_* functions, in order) on every quantized conv of `q_model`, stage by stage.

    fp_model: the fused FP model `q_model` was quantized from (its weights are the target).
    bits: {layer name: bits}. hessian: collect E[x xᵀ] (output scales, GPTQ). paired: the FP
    model runs beside and each conv is fitted alone, in execution order, on paired statistics
    (upstream compensation). Returns per-layer records of what changed.
    """
    fp_layers = conv_layers(fp_model)
    q_layers = {n: m for n, m in conv_layers(q_model).items() if hasattr(m, "weight_quant")}
    records = {}

    def fit(name, stats):
        with torch.no_grad():
            conv = ConvFit(q_layers[name], fp_layers[name], stats, bits[name], narrow_range)
            for technique in techniques:
                technique(conv)
            return conv.finish()

    activations = StagedActivations(q_model, calibration)
    fp_activations = StagedActivations(fp_model, calibration) if paired else None
    for stage in sorted({stage_of(n) for n in q_layers}):
        layers = {n: m for n, m in q_layers.items() if stage_of(n) == stage}
        if paired:
            while activations.stage < stage:
                activations.run(advance=True)
                fp_activations.run(advance=True)
            # one conv at a time, in execution order: each sees its predecessors' final weights
            for name in execution_order(activations, layers):
                stats = collect_paired_stats(fp_activations, activations, fp_layers, {name: layers[name]})
                records[name] = fit(name, stats[name])
        else:
            stats = collect_input_stats(q_model, layers, stage, activations, second_moment=hessian)
            for name in layers:
                records[name] = fit(name, stats[name])
        for name in layers:
            records[name]["stage"] = stage
        activations.run(advance=True)  # hand the next stage the quantized, corrected outputs
        if paired:
            fp_activations.run(advance=True)
    return records
