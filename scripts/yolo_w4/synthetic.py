"""Data-free calibration images, distilled from the checkpoint's BatchNorm statistics (ZeroQ, Cai et al. 2020).

Every BatchNorm layer remembers the mean and spread of its input over the training data.
Starting from grey noise, a batch of images is optimised until each BatchNorm sees its own
running statistics on it; such images exercise the network as real ones do, so GPTQ can
fit 4-bit weights to them without a single real image. They are stored as 8-bit RGB, the
same letterboxed [0, 1] input the evaluation images are.
"""

import math
import time

import torch

from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path


def batchnorm_layers(unfused_model) -> list:
    """The BatchNorm layers whose running statistics the images are matched to."""
    return [module for module in unfused_model.modules() if isinstance(module, torch.nn.BatchNorm2d)]


class ChannelStatistics(torch.autograd.Function):
    """Per-channel (variance, mean) of an N x C x H x W tensor from two plain reductions, and a one-pass backward.

    On a CPU x.var (Welford's algorithm) is ~25x slower than a sum, and autograd's backward of
    x.var and x.mean takes several elementwise passes: together a quarter of a distillation
    step. Here the variance is E[x^2] - E[x]^2 in FP32, which loses (mean / std)^2 x ~1e-7 of
    it: under 1e-4 for the trained YOLOv5n, whose BatchNorm inputs sit within 12 standard
    deviations of zero. The gradient (g_mean + 2 g_var (x - mean)) / count is one addcmul.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.count = x.numel() // x.shape[1]
        mean = x.mean((0, 2, 3))
        var = (torch.linalg.vector_norm(x, dim=(0, 2, 3)).square() / ctx.count - mean.square()).clamp_min(0)
        ctx.save_for_backward(x, mean)
        return var, mean

    @staticmethod
    def backward(ctx, grad_var, grad_mean):
        x, mean = ctx.saved_tensors
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        slope = 2 * grad_var / ctx.count
        offset = grad_mean / ctx.count - slope * mean
        return torch.addcmul(offset.view(1, -1, 1, 1), x, slope.view(1, -1, 1, 1))


def statistics_loss(inputs: list, layers: list) -> torch.Tensor:
    """Mean over layers of the squared distance of the batch's channel mean and std to the running ones.

    The std is BatchNorm's own, sqrt(var + eps): a channel the images drive to a constant
    (variance 0) would otherwise make the gradient of sqrt infinite and the images NaN.
    """
    total = 0.0
    for x, bn in zip(inputs, layers):
        var, mean = ChannelStatistics.apply(x)
        std, running_std = (var + bn.eps).sqrt(), (bn.running_var + bn.eps).sqrt()
        total = total + (mean - bn.running_mean).pow(2).mean() + (std - running_std).pow(2).mean()
    return total / len(layers)


def _optimise(model, layers: list, seen: dict, x: torch.nn.Parameter, steps: int, lr: float) -> float:
    """`steps` Adam steps (cosine learning rate) moving the batch x towards the BatchNorm statistics; the last loss."""
    optimiser = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    loss = torch.zeros(())
    for _ in range(steps):
        model(x)
        loss = statistics_loss([seen[bn] for bn in layers], layers)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    last = float(loss.detach())  # checked once, not per step (a GPU sync): a NaN in x stays there to the end
    if not math.isfinite(last):
        raise UserError(
            f"the distillation of synthetic images diverged (BatchNorm statistics loss {last}); "
            "lower calibration.synthetic.lr or set the variant's calibration_source: images"
        )
    return last


def synthesize_images(
    unfused_model,
    *,
    count: int,
    imgsz: int,
    steps: int,
    lr: float,
    batch: int,
    seed: int = 0,
    device: str = "cpu",
    coarse_imgsz: int | None = None,
    coarse_steps: int = 0,
) -> torch.Tensor:
    """`count` images (uint8, N x 3 x imgsz x imgsz) on which the model's BatchNorms see their training statistics.

    Costs `steps` forward and backward passes per `batch` images: minutes on a CPU for small
    models. Each batch matches the statistics on its own, so a smaller batch asks more of each
    image; on a CPU it is also faster per image (the activations of 8 images at 640 px do not
    stay in cache). coarse_steps > 0: the batch is first distilled at `coarse_imgsz` (a quarter
    of the pixels at half the side), then upsampled and refined for `steps` at imgsz.
    """
    import torch.nn.functional as F

    model = unfused_model.float().eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    layers = batchnorm_layers(model)
    if not layers:
        raise UserError(
            "the checkpoint has no BatchNorm layers (already fused?), so no images can be distilled from it; "
            "use a training checkpoint or set the variant's calibration_source: images"
        )
    seen = {}
    handles = [bn.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0])) for bn in layers]
    generator = torch.Generator().manual_seed(seed)
    start_size = coarse_imgsz if coarse_steps else imgsz
    images, started = [], time.perf_counter()
    try:
        for first in range(0, count, batch):
            size = min(batch, count - first)
            noise = 0.4 + 0.2 * torch.rand(size, 3, start_size, start_size, generator=generator)
            x = torch.nn.Parameter(noise.to(device))
            if coarse_steps:
                _optimise(model, layers, seen, x, coarse_steps, lr)
                upsampled = F.interpolate(x.detach(), size=(imgsz, imgsz), mode="bilinear", align_corners=False)
                x = torch.nn.Parameter(upsampled.clamp(0, 1))
            loss = _optimise(model, layers, seen, x, steps, lr)
            images.append((x.detach() * 255).round().to(torch.uint8).cpu())
            print(
                f"synthetic images {first + size}/{count}: BatchNorm statistics loss {loss:.5f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(images)


def as_calibration(images: torch.Tensor) -> list:
    """uint8 images -> the (1, 3, H, W) float [0, 1] tensors calibrated PTQ reads."""
    return [image.unsqueeze(0).float() / 255 for image in images]


FORMAT = "yolo_w4.synthetic_images/1"


def contact_sheet(images: torch.Tensor, path, columns: int = 4, size: int = 160) -> None:
    """The distilled images side by side in one PNG, so the report shows what GPTQ calibrated on."""
    from PIL import Image

    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for index, image in enumerate(images):
        tile = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size))
        sheet.paste(tile, ((index % columns) * size, (index // columns) * size))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def save_synthetic(path, images: torch.Tensor, settings: dict, inputs: dict) -> dict:
    """Write the images with what made them (settings, checkpoint sha256, versions); return the record."""
    from yolo_w4.provenance import utc_now, versions

    record = {"format": FORMAT, "settings": settings, "inputs": inputs, "versions": versions(), "created": utc_now()}
    with atomic_path(path) as tmp:
        torch.save({**record, "images": images}, tmp)
    return record


def load_synthetic(path) -> tuple[list, dict]:
    """The calibration tensors of a file `save_synthetic` wrote, and its record; anything else is one clear error."""
    try:
        data = torch.load(path, weights_only=True)
    except Exception as error:
        raise UserError(
            f"{path}: not a synthetic calibration file ({type(error).__name__}); re-run rule synthesize_calibration"
        ) from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a synthetic calibration file (format {FORMAT}); re-run rule synthesize_calibration"
        )
    images = data.pop("images")
    return as_calibration(images), data
