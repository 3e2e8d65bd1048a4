"""Weight-only quantization: which layers, which integer range, and an exact state-dict round trip."""

import pytest
import torch

from yolo_w4.config import default_recipe
from yolo_w4.errors import UserError
from yolo_w4.quantize import conv_layers, quantization_summary, quantize_weights
from yolo_w4.quantized_checkpoint import load_quantized, save_quantized


def integer_weights(module) -> torch.Tensor:
    return module.quant_weight().int()


def test_every_conv_but_dfl_gets_4_bit_per_channel_weights(detector):
    model = quantize_weights(detector.model, default_recipe())
    layers = conv_layers(model)
    dfl = [name for name in layers if name.endswith(".dfl.conv")]
    assert dfl == ["model.23.dfl.conv"]
    summary = quantization_summary(model)
    assert summary["quantized_layers"] == len(layers) - 1 and summary["float_layers"] == 1
    assert summary["weights_4bit_fraction"] == 1.0
    assert not hasattr(layers["model.23.dfl.conv"], "weight_quant")
    for name, module in layers.items():
        if name in dfl:
            continue
        assert int(module.weight_quant.bit_width()) == 4
        assert not module.input_quant.is_quant_enabled, f"{name}: activations must stay float"
        assert not module.bias_quant.is_quant_enabled, f"{name}: biases must stay float"
        ints = integer_weights(module)
        assert ints.min() >= -7 and ints.max() <= 7
        scale = module.quant_weight().scale
        assert scale.numel() == module.out_channels, f"{name}: one scale per output channel"


def test_quantization_changes_outputs_but_keeps_dfl_exact(detector, coco_photo):
    model = quantize_weights(detector.model, default_recipe())
    dfl_fp = conv_layers(detector.model)["model.23.dfl.conv"].weight
    assert torch.equal(conv_layers(model)["model.23.dfl.conv"].weight, dfl_fp)
    x = torch.from_numpy(coco_photo[0])
    with torch.no_grad():
        assert not torch.equal(model(x), detector.model(x))


def test_keep_float_globs_leave_layers_unquantized(detector):
    model = quantize_weights(detector.model, default_recipe(keep_float=["model.0.conv", "model.23.one2one_cv3.*"]))
    summary = quantization_summary(model)
    floats = {layer["name"] for layer in summary["layers"] if layer["bits"] is None}
    assert "model.0.conv" in floats and "model.23.dfl.conv" in floats
    assert any(name.startswith("model.23.one2one_cv3.") for name in floats)
    assert 0.9 < summary["weights_4bit_fraction"] < 1.0


@pytest.mark.parametrize(
    ("settings", "low", "high"),
    [
        ({"narrow_range": False}, -8, 7),
        ({"weight_bits": 8}, -127, 127),
        ({"symmetric": False, "narrow_range": False}, 0, 15),
    ],
)
def test_settings_change_the_integer_grid(detector, settings, low, high):
    module = conv_layers(quantize_weights(detector.model, default_recipe(**settings)))["model.2.cv1.conv"]
    ints = integer_weights(module)
    assert low <= ints.min() and ints.max() <= high
    assert ints.min() == low or ints.max() == high, "the grid's ends are used"


def test_mse_scale_clips_tighter_than_minmax(detector):
    minmax = conv_layers(quantize_weights(detector.model, default_recipe(scale="minmax")))["model.2.cv1.conv"]
    mse = conv_layers(quantize_weights(detector.model, default_recipe(scale="mse")))["model.2.cv1.conv"]
    assert (mse.quant_weight().scale <= minmax.quant_weight().scale + 1e-12).all()
    assert (mse.quant_weight().scale < minmax.quant_weight().scale).any()


def fp16_values(tensor: torch.Tensor) -> bool:
    return torch.equal(tensor.half().float(), tensor)


@pytest.mark.parametrize(
    "settings",
    [{}, {"scale": "mse"}, {"symmetric": False}, {"weight_bits": 8}, {"group_size": 32}],
    ids=["minmax", "mse", "asymmetric", "8-bit", "groups"],
)
def test_scales_and_biases_are_fp16_values(detector, settings):
    """So the INT4 file stores them in 16 bits with the same outputs; min-max scales move by at most half an FP16 step."""
    model = quantize_weights(detector.model, default_recipe(**settings))
    quantized = {n: m for n, m in conv_layers(model).items() if hasattr(m, "weight_quant")}
    assert len(quantized) > 50
    for name, module in quantized.items():
        scale = module.quant_weight().scale.detach()
        assert fp16_values(scale) and fp16_values(module.bias.detach()), name
    fp = conv_layers(detector.model)["model.2.cv1.conv"]
    if not settings:  # min-max: max |w| / 7 per channel, rounded to the nearest FP16 value
        scale = quantized["model.2.cv1.conv"].quant_weight().scale.detach().flatten()
        exact = fp.weight.detach().abs().amax((1, 2, 3)) / 7
        assert torch.allclose(scale, exact, rtol=2.0**-11, atol=0)
        assert not torch.equal(scale, exact), "Brevitas' own scales are not all FP16 values"
    bias = quantized["model.2.cv1.conv"].bias.detach()
    assert torch.allclose(bias, fp.bias.detach(), rtol=2.0**-11, atol=2.0**-24)


def test_quantize_refuses_a_half_precision_model(detector):
    import copy

    with pytest.raises(ValueError, match="quantize in FP32"):
        quantize_weights(copy.deepcopy(detector.model).half(), default_recipe())


def test_state_dict_round_trip_is_bit_for_bit(detector, seeded_checkpoint, coco_photo, tmp_path):
    settings = default_recipe(scale="mse")
    model = quantize_weights(detector.model, settings)
    record = save_quantized(tmp_path / "w4.pt", model, detector, "w4a16", settings)
    assert record["checkpoint"]["sha256"] == detector.sha256
    assert record["summary"]["weights_4bit_fraction"] == 1.0
    rebuilt, _, loaded = load_quantized(tmp_path / "w4.pt", seeded_checkpoint)
    assert loaded["variant"] == "w4a16" and loaded["settings"] == settings
    x = torch.from_numpy(coco_photo[0])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_state_dict_refuses_a_different_checkpoint(detector, tmp_path):
    from yolo_w4.seeded import build_seeded_checkpoint

    save_quantized(tmp_path / "w4.pt", quantize_weights(detector.model, default_recipe()), detector, "w4a16", {})
    other = build_seeded_checkpoint(tmp_path / "other.pt", "yolov10n.yaml", seed=1)
    with pytest.raises(UserError, match="was made from a checkpoint with sha256"):
        load_quantized(tmp_path / "w4.pt", other)


def test_importing_the_quantizer_says_nothing_a_user_cannot_act_on():
    """Brevitas' absent-Hadamard-kernel warning and PyTorch's "No CUDA runtime" log line are silenced."""
    import subprocess
    import sys

    code = "import yolo_w4.quantize, brevitas.nn; from brevitas.graph.quantize import layerwise_quantize"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


def test_keep_float_globs_that_match_nothing_warn_and_those_that_leave_nothing_stop(detector, capsys):
    model = quantize_weights(detector.model, default_recipe(keep_float=["model.0.conv", "model.99.*"]))
    bits = {layer["name"]: layer["bits"] for layer in quantization_summary(model)["layers"]}
    assert bits["model.0.conv"] is None and bits["model.1.conv"] == 4
    assert "warning: keep_float 'model.99.*' matches no conv of this model" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"keep_float \['model\.\*'\] leaves no conv to quantize"):
        quantize_weights(detector.model, default_recipe(keep_float=["model.*"]))
