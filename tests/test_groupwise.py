"""Group-wise 4-bit weights on the trained YOLOv5n: lower error than per channel, exported as real ONNX."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from test_ptq import bits_of, calibration, held_out, output_sqnr, proxy  # noqa: F401 (fixtures)
from yolo_w4.config import check_variant, default_recipe
from yolo_w4.errors import UserError
from yolo_w4.export import export_qcdq, onnx_summary
from yolo_w4.groupwise import groupwise_layers
from yolo_w4.pack_int4 import pack_int4
from yolo_w4.parity import compare_outputs
from yolo_w4.quantize import conv_layers, quantization_summary, quantize_weights
from yolo_w4.recipe import apply_calibration
from yolo_w4.runtime import create_session, input_feed


def weight_error(fp_model, model) -> float:
    fp = conv_layers(fp_model)
    return sum(
        float((fp[name].weight - conv.quant_weight().value).pow(2).sum())
        for name, conv in conv_layers(model).items()
        if hasattr(conv, "weight_quant")
    )


def layer_errors(fp_model, model, images) -> dict:
    """{conv: E||conv_fp(x) - conv_q(x)||²} with x the FP model's own input to that conv (each layer alone)."""
    fp, quantized = conv_layers(fp_model), conv_layers(model)
    inputs = {name: [] for name in fp}
    handles = [conv.register_forward_pre_hook(lambda m, a, n=n: inputs[n].append(a[0])) for n, conv in fp.items()]
    with torch.no_grad():
        for x in images:
            fp_model(x)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        return {
            name: sum(float((fp[name](x) - quantized[name](x)).pow(2).mean()) for x in inputs[name])
            for name in fp
            if hasattr(quantized[name], "weight_quant")
        }


def test_groups_lower_the_weight_and_layer_error_of_round_to_nearest(proxy, held_out):  # noqa: F811
    per_channel = quantize_weights(proxy.model, default_recipe())
    channel = layer_errors(proxy.model, per_channel, held_out[:2])
    errors, totals = {}, {}
    for group in (128, 32):
        model = quantize_weights(proxy.model, default_recipe(group_size=group))
        errors[group] = weight_error(proxy.model, model)
        layers = layer_errors(proxy.model, model, held_out[:2])
        split = {name for name, conv in groupwise_layers(model).items() if conv.scale.shape[1] > 1}
        for name in set(layers) - split:  # one group: the per-channel grid, its scale rounded to FP16
            assert layers[name] == pytest.approx(channel[name], rel=0.05), name
        better = [name for name in split if layers[name] < channel[name]]
        assert split and len(better) >= 0.9 * len(split), (group, sorted(split - set(better)))
        totals[group] = sum(layers.values()) / sum(channel.values())
    assert totals[32] < 0.7 and totals[32] < totals[128] < 0.95, totals  # measured: 0.65, 0.88
    assert errors[32] < errors[128] < weight_error(proxy.model, per_channel), errors
    summary = quantization_summary(quantize_weights(proxy.model, default_recipe(group_size=32)))
    assert 4.5 <= summary["bits_per_weight"] < 4.6, "4 bits + one FP16 scale per 32 weights (short last groups)"
    first = summary["layers"][0]  # model.0.conv: 3 x 6 x 6 = 108 weights per channel -> 4 groups, the last of 12
    assert first["group_size"] == 32 and first["scales"] == first["shape"][0] * 4


def test_layers_no_wider_than_a_group_stay_per_channel(proxy):  # noqa: F811
    model = quantize_weights(proxy.model, default_recipe(group_size=256))
    for name, conv in groupwise_layers(model).items():
        width = conv.weight[0].numel()
        assert conv.group_size == min(256, width), name
        if width <= 256:
            assert conv.scale.shape == (conv.out_channels, 1), name
    assert any(conv.weight[0].numel() <= 256 for conv in groupwise_layers(model).values())


def on_grid(conv) -> bool:
    """Every weight is an integer within its bounds times its group's scale (asymmetric: stored 0..15)."""
    grid = conv.weight.detach() / conv.element_scale()
    low, high = conv.integer_bounds()
    inside = bool(((grid.round() >= low) & (grid.round() <= high)).all())
    return torch.allclose(grid, grid.round(), atol=1e-4) and inside


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_gptq_with_static_groups_stays_on_the_grid_and_beats_group_rtn(proxy, calibration, held_out, symmetric):  # noqa: F811
    settings = default_recipe(group_size=32, method="gptq", scale="mse", symmetric=symmetric)
    rtn = quantize_weights(proxy.model, settings)
    model = quantize_weights(proxy.model, settings)
    records = apply_calibration(proxy.model, model, calibration, settings, bits_of(proxy.model))
    assert sum(r["weights_changed"] for r in records.values()) > 0
    for name, conv in groupwise_layers(model).items():
        assert on_grid(conv), name
        if symmetric:
            assert conv.integers().abs().max() <= 7, name
    assert output_sqnr(proxy.model, model, held_out) > output_sqnr(proxy.model, rtn, held_out) + 1


def test_asymmetric_groups_use_all_16_integers_and_lower_the_layer_error(proxy, held_out):  # noqa: F811
    """A zero point per group: stored integers 0..15 spanning the group's own [min, max] (0 inside), a lower
    layer output error than symmetric groups of the same size, 4 bits more per group."""
    symmetric = quantize_weights(proxy.model, default_recipe(group_size=32, scale="mse"))
    asymmetric = quantize_weights(proxy.model, default_recipe(group_size=32, scale="mse", symmetric=False))
    theirs, ours = (
        layer_errors(proxy.model, symmetric, held_out[:2]),
        layer_errors(proxy.model, asymmetric, held_out[:2]),
    )
    assert sum(ours.values()) < 0.8 * sum(theirs.values()), (sum(ours.values()), sum(theirs.values()))
    stored = set()
    for name, conv in groupwise_layers(asymmetric).items():
        low, high = conv.integer_bounds()
        assert ((conv.integers() >= low) & (conv.integers() <= high)).all(), name
        zero = conv.per_weight(conv.zero_point)
        stored |= set((conv.integers() + zero).unique().int().tolist())
        assert conv.zero_point.min() >= 0 and conv.zero_point.max() <= 15, name
        assert torch.equal(conv.zero_point, conv.zero_point.round()), name
    assert stored == set(range(16))
    bits = quantization_summary(asymmetric)["bits_per_weight"]
    assert bits == pytest.approx(quantization_summary(symmetric)["bits_per_weight"] + 4 / 32, abs=0.01), bits


@pytest.mark.parametrize(
    ("precision", "symmetric"), [("fp32", True), ("fp16", True), ("fp32", False), ("fp16", False)],
    ids=["fp32", "fp16", "fp32-asymmetric", "fp16-asymmetric"],
)  # fmt: skip
def test_export_reads_back_integers_scales_and_blocks_and_runs_like_pytorch(
    proxy,  # noqa: F811
    held_out,  # noqa: F811
    tmp_path,
    precision,
    symmetric,
):
    model = quantize_weights(proxy.model, default_recipe(group_size=32, scale="mse", symmetric=symmetric))
    path, packed = tmp_path / "g32.onnx", tmp_path / "g32-int4.onnx"
    export_qcdq(model, path, 640, precision)
    proto = onnx.load(str(path))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 21
    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    blocks = {
        node.input[1].removesuffix("_cast").removesuffix(".weight_scale"): next(
            a.i for a in node.attribute if a.name == "block_size"
        )
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
    }
    layers = groupwise_layers(model)
    assert set(blocks) == set(layers)
    for name, conv in layers.items():
        integers = constants[f"{name}.weight_int"]
        expected = conv.integers().detach()
        if not symmetric:  # stored uint8 = integer + zero point, and the zero points beside the scales
            expected = expected + conv.per_weight(conv.zero_point)
            assert np.array_equal(constants[f"{name}.weight_zero_point"], conv.zero_point.numpy().astype(np.uint8))
        assert integers.dtype == (np.int8 if symmetric else np.uint8)
        assert integers.shape == (conv.out_channels, conv.weight[0].numel())
        assert np.array_equal(integers, expected.reshape(conv.out_channels, -1).numpy().astype(integers.dtype))
        scale = constants[f"{name}.weight_scale"]
        assert scale.dtype == np.float16, "FP16 scales in both files (FP16 values by construction)"
        assert np.array_equal(scale.astype(np.float32), conv.scale.numpy()) and blocks[name] == conv.group_size
    summary = onnx_summary(path)
    assert summary["weight_clip_ranges"] == [(-7, 7) if symmetric else (0, 15)]
    assert summary["node_counts"]["DequantizeLinear"] == len(layers)
    info = pack_int4(path, packed)
    assert info["layers_packed"] == len(layers) and info["layers_kept_int8"] == 0
    four_bit = {i.data_type for i in onnx.load(str(packed)).graph.initializer if i.name.endswith("_int4")}
    assert four_bit == {onnx.TensorProto.INT4 if symmetric else onnx.TensorProto.UINT4}, four_bit
    x = held_out[0]
    with torch.no_grad():
        reference = model(x)
    reference = (reference[0] if isinstance(reference, (tuple, list)) else reference).numpy()
    outputs = {}
    for file in (path, packed):
        session, _ = create_session(file, "cpu")
        feed = input_feed(session, x.numpy())
        outputs[file] = session.run(None, feed)[0].astype(np.float32)
    assert np.array_equal(outputs[path], outputs[packed]), "INT4 packing changes nothing"
    parity = compare_outputs(reference, outputs[path], "one2many")["sqnr_db"]
    assert parity >= (80 if precision == "fp32" else 35), parity


def test_group_state_dict_round_trip_is_exact(proxy, held_out, tmp_path):  # noqa: F811
    from conftest import shared
    from test_legacy_yolov5 import YOLOV5N
    from yolo_w4.quantized_checkpoint import load_quantized, save_quantized

    settings = default_recipe(group_size=64, scale="mse", symmetric=False)  # zero points travel too
    model = quantize_weights(proxy.model, settings)
    save_quantized(tmp_path / "g.pt", model, proxy, "w4a16_g64", settings)
    rebuilt, _, _ = load_quantized(tmp_path / "g.pt", shared(*YOLOV5N))
    with torch.no_grad():
        assert torch.equal(rebuilt(held_out[0])[0], model(held_out[0])[0])


def test_groups_refuse_what_they_do_not_support():
    check_variant("g", default_recipe(group_size=32, symmetric=False, method="gptq"))  # asymmetric groups: fine
    with pytest.raises(UserError, match=r"method adaround with symmetric: false needs group_size"):
        check_variant("g", default_recipe(symmetric=False, method="adaround"))
    with pytest.raises(UserError, match=r"group_size 32 cannot be combined with scale: output"):
        check_variant("g", default_recipe(group_size=32, scale="output", method="gptq"))
