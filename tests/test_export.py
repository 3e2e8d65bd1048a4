"""ONNX export: QCDQ structure, Clip ranges, and ONNX Runtime vs PyTorch parity on a real photo."""

import inspect

import numpy as np
import onnx
import pytest
import torch

from yolo_w4.checkpoint import load_detector
from yolo_w4.config import default_recipe
from yolo_w4.export import export_fp, export_qcdq, onnx_summary
from yolo_w4.parity import compare_outputs
from yolo_w4.quantize import conv_layers, quantize_weights
from yolo_w4.runtime import create_session, input_feed
from yolo_w4.torch_compat import onnx_export_kwargs


def ort_output(path, tensor):
    session, record = create_session(path, "cpu")
    assert record["provider_used"] == "CPUExecutionProvider"
    return session.run(None, input_feed(session, tensor))[0]


def torch_output(model, tensor):
    with torch.no_grad():
        return model(torch.from_numpy(tensor)).numpy()


@pytest.fixture(scope="module")
def w4(detector):
    return quantize_weights(detector.model, default_recipe())


@pytest.fixture(scope="module")
def w4_onnx(w4, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "w4.onnx"
    export_qcdq(w4, path)
    return path


def test_qcdq_graph_has_one_clip_and_dequantize_per_quantized_conv(w4, w4_onnx):
    summary = onnx_summary(w4_onnx)
    convs = len(conv_layers(w4))
    counts = summary["node_counts"]
    assert counts == {"Conv": convs, "DequantizeLinear": convs - 1, "QuantizeLinear": 0, "Clip": convs - 1}
    assert summary["weight_clip_ranges"] == [(-7, 7)]
    clips = summary["weight_clips"]
    assert all(c["int_dtype"] == "int8" and c["values_min"] >= -7 and c["values_max"] <= 7 for c in clips)
    by_layer = {c["layer"]: c for c in clips}
    assert "model.23.dfl.conv" not in by_layer
    assert by_layer["model.0.conv"]["channels"] == conv_layers(w4)["model.0.conv"].out_channels
    assert summary["outputs"]["output0"]["shape"] == [1, 300, 6]


@pytest.mark.parametrize(
    ("settings", "expected"), [({"narrow_range": False}, [(-8, 7)]), ({"weight_bits": 8}, [(-127, 127)])]
)
def test_clip_range_follows_the_settings(detector, tmp_path, settings, expected):
    path = tmp_path / "q.onnx"
    export_qcdq(quantize_weights(detector.model, default_recipe(**settings)), path)
    assert onnx_summary(path)["weight_clip_ranges"] == expected


def test_w4_onnx_matches_its_fake_quant_model(w4, w4_onnx, coco_photo):
    tensor = coco_photo[0]
    parity = compare_outputs(torch_output(w4, tensor), ort_output(w4_onnx, tensor), "one2one")
    assert parity["sqnr_db"] >= 80, parity
    assert parity["rows_matched"] >= 295, parity


def test_fp_and_w4_parity_elementwise_on_the_one2many_head(seeded_checkpoint, coco_photo, tmp_path):
    """No top-k here, so every one of the 84 x 8400 values is compared in place."""
    detector = load_detector(seeded_checkpoint, "one2many")
    tensor = coco_photo[0]
    export_fp(detector.model, tmp_path / "fp.onnx")
    fp = compare_outputs(torch_output(detector.model, tensor), ort_output(tmp_path / "fp.onnx", tensor), "one2many")
    assert fp["sqnr_db"] >= 80, fp
    w4 = quantize_weights(detector.model, default_recipe())
    export_qcdq(w4, tmp_path / "w4.onnx")
    q = compare_outputs(torch_output(w4, tensor), ort_output(tmp_path / "w4.onnx", tensor), "one2many")
    assert q["sqnr_db"] >= 80, q
    assert q["method"] == "element-wise"


def test_fp16_export_runs_in_onnx_runtime(w4, tmp_path, coco_photo):
    path = tmp_path / "w4-fp16.onnx"
    export_qcdq(w4, path, precision="fp16")
    summary = onnx_summary(path)
    assert summary["inputs"]["images"]["dtype"] == "float16"
    assert summary["weight_clip_ranges"] == [(-7, 7)], "integer weights are unchanged by the FP16 cast"
    output = ort_output(path, coco_photo[0])
    assert output.shape == (1, 300, 6) and np.isfinite(output).all()


def weight_integers(path) -> list:
    """Every weight Clip's integer tensor, in graph order."""
    graph = onnx.load(str(path)).graph
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return [constants[node.input[0]] for node in graph.node if node.op_type == "Clip" and node.input[0] in constants]


def test_fp16_export_keeps_every_integer_of_the_fp32_export(w4, w4_onnx, tmp_path):
    # Cast naively, ~0.1% of round-to-nearest integers flip (weights near a rounding boundary).
    path = tmp_path / "w4-fp16.onnx"
    export_qcdq(w4, path, precision="fp16")
    fp32, fp16 = weight_integers(w4_onnx), weight_integers(path)
    assert len(fp32) == len(fp16) == 82
    changed = sum(int((a != b).sum()) for a, b in zip(fp32, fp16))
    assert changed == 0, f"{changed} integer weights differ between the FP32 and FP16 exports"


def test_torch_compat_asks_for_the_torchscript_exporter(w4_onnx):
    kwargs = onnx_export_kwargs()
    assert kwargs["keep_initializers_as_inputs"] is False
    assert ("dynamo" in inspect.signature(torch.onnx.export).parameters) == ("dynamo" in kwargs)
    assert kwargs.get("dynamo", False) is False
    graph = onnx.load(str(w4_onnx)).graph
    initializers = {init.name for init in graph.initializer}
    assert [i.name for i in graph.input] == ["images"] and not initializers & {i.name for i in graph.input}


@pytest.mark.parametrize("symmetric", [True, False])
def test_export_writes_what_brevitas_qcdq_exporter_writes(tmp_path, coco_photo, symmetric):
    """Our writer against Brevitas' own QCDQ exporter (which re-quantizes every weight several times
    over and is ~3x slower): same integers, zero points, scales and Clip ranges, identical outputs."""
    from brevitas.export import export_onnx_qcdq

    from conftest import shared
    from yolo_w4.onnx_graph import graph_constants

    proxy = load_detector(shared("models", "yolov5n-v6.1-coco-legacy.pt"), head="one2many")
    model = quantize_weights(proxy.model, default_recipe(symmetric=symmetric))
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "brevitas.onnx"
    export_qcdq(model, ours)
    with torch.no_grad():
        export_onnx_qcdq(
            model, args=torch.zeros(1, 3, 640, 640), export_path=str(theirs), opset_version=17,
            input_names=["images"], output_names=["output0"], **onnx_export_kwargs(),
        )  # fmt: skip
    summaries = [onnx_summary(path)["weight_clips"] for path in (ours, theirs)]
    assert len(summaries[0]) == len(summaries[1]) == 60
    for a, b in zip(*summaries):
        assert {k: v for k, v in a.items() if k != "layer"} == {k: v for k, v in b.items() if k != "layer"}

    def dequantized(path):  # each conv's weight: (integers - zero point) x scale, in graph order
        graph = onnx.load(str(path)).graph
        constants = graph_constants(graph)
        found = []
        for node in graph.node:
            if node.op_type == "DequantizeLinear":
                clip = next(n for n in graph.node if n.output[0] == node.input[0])
                integers = constants[clip.input[0]].astype(np.float64)
                zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0.0
                shape = (-1,) + (1,) * (integers.ndim - 1)
                found.append((integers - np.reshape(zero, shape)) * np.reshape(constants[node.input[1]], shape))
        return sorted(found, key=lambda w: (w.shape, float(np.abs(w).sum())))

    for a, b in zip(dequantized(ours), dequantized(theirs)):
        np.testing.assert_array_equal(a, b)
    image, _ = coco_photo
    np.testing.assert_array_equal(ort_output(ours, image), ort_output(theirs, image))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"symmetric": False},
        {"group_size": 32},
        {"group_size": 32, "symmetric": False},
        {"layer_bits": {"model.0.conv": 8}},
    ],
    ids=["per-channel", "asymmetric", "groups", "asymmetric groups", "mixed"],
)
def test_export_from_the_saved_integers_is_the_export_of_the_quantized_model(
    detector, seeded_checkpoint, tmp_path, settings
):
    """The export and smoke jobs read the integers the quantize step saved (no Brevitas, no rebuild): the
    same outputs as the quantized model, the same file."""
    from yolo_w4.export import dequantize
    from yolo_w4.quantized_checkpoint import load_dequantized, save_quantized

    recipe = default_recipe(**settings)
    model = quantize_weights(detector.model, recipe)
    save_quantized(tmp_path / "q.pt", model, detector, "w4a16", recipe)
    plain, _, record, weights = load_dequantized(tmp_path / "q.pt", seeded_checkpoint)
    assert record["variant"] == "w4a16" and "state_dict" not in record
    assert not any(hasattr(module, "weight_quant") for module in plain.modules())
    quantized = {n: m for n, m in conv_layers(model).items() if hasattr(m, "weight_quant")}
    assert sorted(weights) == sorted(quantized)
    for name, module in quantized.items():
        assert torch.equal(dequantize(weights[name]), module.quant_weight().value.detach()), name
        assert torch.equal(plain.get_submodule(name).bias, module.bias), name
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    export_qcdq(model, tmp_path / "from-model.onnx")
    export_qcdq(plain, tmp_path / "from-saved.onnx", weights=weights)
    assert (tmp_path / "from-model.onnx").read_bytes() == (tmp_path / "from-saved.onnx").read_bytes()


def test_an_artifact_of_another_format_version_is_refused(tmp_path):
    from yolo_w4.errors import UserError
    from yolo_w4.quantized_checkpoint import load_dequantized

    torch.save({"format": "yolo_w4.quantized_state_dict/1", "state_dict": {}}, tmp_path / "old.pt")
    with pytest.raises(UserError, match=r"another yolo-w4 version .*re-run the quantize rule"):
        load_dequantized(tmp_path / "old.pt")
