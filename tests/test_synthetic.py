"""Data-free calibration: images distilled from the trained YOLOv5n's BatchNorm statistics."""

import pytest
import torch

from conftest import shared
from test_legacy_yolov5 import YOLOV5N
from test_ptq import bits_of, held_out, output_sqnr, proxy  # noqa: F401 - fixtures
from yolo_w4.checkpoint import unfused_model
from yolo_w4.config import check_variant, default_recipe
from yolo_w4.errors import UserError
from yolo_w4.quantize import quantize_weights
from yolo_w4.recipe import apply_calibration
from yolo_w4.synthetic import (
    ChannelStatistics,
    as_calibration,
    batchnorm_layers,
    load_synthetic,
    statistics_loss,
    synthesize_images,
)


@pytest.fixture(scope="module")
def unfused():
    return unfused_model(shared(*YOLOV5N))


def batchnorm_distance(model, images: torch.Tensor) -> float:
    layers, seen = batchnorm_layers(model), {}
    handles = [bn.register_forward_pre_hook(lambda m, a: seen.__setitem__(m, a[0])) for bn in layers]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return float(statistics_loss([seen[bn] for bn in layers], layers))


def test_channel_statistics_match_autograd_and_stay_exact_in_fp32():
    """The fast per-channel variance and mean: the same values and gradients as x.var / x.mean."""
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ChannelStatistics.apply, (x,))
    var, mean = ChannelStatistics.apply(x)
    assert torch.allclose(var, x.var((0, 2, 3), unbiased=False)) and torch.allclose(mean, x.mean((0, 2, 3)))
    # FP32 activations up to 14 standard deviations from zero (the trained YOLOv5n's BatchNorm inputs: up to 11.5)
    shifted = torch.randn(1, 8, 80, 80, dtype=torch.float64) + 2 * torch.arange(8.0, dtype=torch.float64).view(
        1, -1, 1, 1
    )
    var32, mean32 = ChannelStatistics.apply(shifted.float())
    exact = shifted.var((0, 2, 3), unbiased=False)
    assert torch.allclose(var32.double(), exact, rtol=1e-4), (var32, exact)
    assert torch.allclose(mean32.double(), shifted.mean((0, 2, 3)), rtol=1e-6)


def test_synthesized_images_carry_the_batchnorm_statistics(unfused):
    noise = 0.4 + 0.2 * torch.rand(4, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    images = synthesize_images(unfused, count=4, imgsz=160, steps=40, lr=0.05, batch=4, seed=0)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, 160, 160)
    before, after = batchnorm_distance(unfused, noise), batchnorm_distance(unfused, images.float() / 255)
    assert after < 0.2 * before, (before, after)
    again = synthesize_images(unfused, count=2, imgsz=64, steps=3, lr=0.05, batch=2, seed=1)
    assert torch.equal(again, synthesize_images(unfused, count=2, imgsz=64, steps=3, lr=0.05, batch=2, seed=1)), (
        "seeded"
    )


def test_gptq_on_synthetic_images_beats_round_to_nearest_on_real_images(proxy, unfused, held_out):  # noqa: F811
    """Not one real image in calibration, yet the output error on real photos drops."""
    synthetic = as_calibration(synthesize_images(unfused, count=8, imgsz=320, steps=60, lr=0.05, batch=8, seed=0))
    rtn = quantize_weights(proxy.model, default_recipe(scale="mse"))
    calibrated = quantize_weights(proxy.model, default_recipe(scale="mse"))
    apply_calibration(
        proxy.model, calibrated, synthetic, default_recipe(method="gptq", scale="mse"), bits_of(proxy.model)
    )
    rtn_db, ours_db = output_sqnr(proxy.model, rtn, held_out), output_sqnr(proxy.model, calibrated, held_out)
    assert ours_db > rtn_db + 3, (rtn_db, ours_db)


def test_synthetic_source_needs_a_calibrated_method_batchnorm_and_a_synthetic_file(tmp_path):
    with pytest.raises(UserError, match="calibration_source: synthetic needs a calibrated method") as error:
        check_variant("w4", default_recipe(calibration_source="synthetic"))
    assert "\n" not in str(error.value)
    check_variant("w4", default_recipe(method="gptq", calibration_source="synthetic"))
    with pytest.raises(UserError, match=r"no BatchNorm layers .* calibration_source: images"):
        synthesize_images(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), count=1, imgsz=32, steps=1, lr=0.05, batch=1)
    corrupt = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    corrupt[1].running_var.fill_(-1.0)  # no real statistics: the loss is NaN from the first step
    with pytest.raises(UserError, match=r"distillation of synthetic images diverged .* lower calibration.synthetic.lr"):
        synthesize_images(corrupt, count=1, imgsz=32, steps=2, lr=0.05, batch=1)
    wrong = tmp_path / "wrong.pt"
    torch.save({"images": torch.zeros(1, 3, 32, 32, dtype=torch.uint8)}, wrong)
    with pytest.raises(UserError, match="not a synthetic calibration file"):
        load_synthetic(wrong)
