"""INT4 packing: half the QCDQ file, the same integers, identical ONNX Runtime outputs on a real photo."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from yolo_w4.config import default_recipe
from yolo_w4.errors import UserError
from yolo_w4.export import export_fp, export_qcdq, onnx_summary
from yolo_w4.pack_int4 import pack_int4, pack_nibbles
from yolo_w4.quantize import quantize_weights
from yolo_w4.runtime import create_session, input_feed


def ort_output(path, tensor):
    session, _ = create_session(path, "cpu")
    return session.run(None, input_feed(session, tensor))[0]


def weight_types(path) -> dict:
    """{DequantizeLinear input name: element type} of the weight initializers."""
    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    return {
        n.input[0]: initializers[n.input[0]].data_type
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in initializers
    }


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """QCDQ exports of the seeded YOLOv10n: strict W4, W4 with one 8-bit layer, asymmetric W4, FP16 W4."""
    folder = tmp_path_factory.mktemp("pack")
    variants = {
        "w4": ({}, "fp32"),
        "mixed": ({"layer_bits": {"model.0.conv": 8}}, "fp32"),
        "asym": ({"symmetric": False}, "fp32"),
        "fp16": ({}, "fp16"),
    }
    paths = {}
    for name, (settings, precision) in variants.items():
        paths[name] = folder / f"{name}.onnx"
        export_qcdq(quantize_weights(detector.model, default_recipe(**settings)), paths[name], precision=precision)
    return paths


def test_nibbles_follow_the_onnx_layout():
    """First value in the low nibble, two's complement, odd counts padded."""
    assert pack_nibbles(np.array([1, -1, -8, 7, 3])) == bytes([0xF1, 0x78, 0x03])


@pytest.mark.parametrize("name", ["w4", "asym", "fp16"])
def test_packed_model_keeps_every_integer_and_gives_identical_outputs(exported, name, tmp_path, coco_photo):
    qcdq, packed = exported[name], tmp_path / f"{name}-int4.onnx"
    record = pack_int4(qcdq, packed)
    summary = onnx_summary(qcdq)
    assert record["layers_packed"] == len(summary["weight_clips"]) and record["layers_kept_int8"] == 0
    model = onnx.load(str(packed))
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [21]
    assert not [n for n in model.graph.node if n.op_type == "Clip" and n.input[0] in weight_types(packed)]
    expected_type = TensorProto.UINT4 if name == "asym" else TensorProto.INT4
    assert set(weight_types(packed).values()) == {expected_type}
    # the same integers, layer by layer
    original = sorted(int(c["weights"]) for c in summary["weight_clips"])
    arrays = [
        numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == expected_type and i.dims and len(i.dims) == 4
    ]
    assert sorted(a.size for a in arrays) == original
    assert all(a.min() >= (0 if name == "asym" else -7) and a.max() <= (15 if name == "asym" else 7) for a in arrays)
    reference, test = ort_output(qcdq, coco_photo[0]), ort_output(packed, coco_photo[0])
    assert reference.dtype == test.dtype and np.array_equal(reference, test)
    assert packed.stat().st_size < 0.6 * qcdq.stat().st_size
    # scales and biases are FP16 values: stored as FP16 (a Cast gives the graph its FP32 back)
    floats = [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
    wide = [i.name for i in floats if numpy_helper.to_array(i).size >= 64]
    assert not wide, f"FP32 initializers of 64 values or more left: {wide[:3]}"
    narrow = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16}
    scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    assert sum(casts.get(name) in narrow for name in scales) > 30
    assert record["fp16_exact_bytes_saved"] > 0 and not model.graph.value_info


def test_8bit_layers_stay_int8(exported, tmp_path, coco_photo):
    packed = tmp_path / "mixed-int4.onnx"
    record = pack_int4(exported["mixed"], packed)
    assert record["layers_kept_int8"] == 1
    kept = onnx_summary(packed)["weight_clips"]
    assert [(c["layer"], c["int_dtype"], c["min"], c["max"]) for c in kept] == [("model.0.conv", "int8", -127, 127)]
    assert set(weight_types(packed).values()) == {TensorProto.INT4}
    assert np.array_equal(ort_output(exported["mixed"], coco_photo[0]), ort_output(packed, coco_photo[0]))


def test_fp_model_is_refused_and_nothing_is_written(detector, tmp_path):
    fp = tmp_path / "fp.onnx"
    export_fp(detector.model, fp)
    with pytest.raises(UserError, match=r"has no quantized weights .* pack the QCDQ export of a quantized variant"):
        pack_int4(fp, tmp_path / "fp-int4.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp.onnx"]


@pytest.mark.parametrize(
    ("content", "message"), [(None, "ONNX file not found: "), (b"not a model", "is not an ONNX model")]
)
def test_missing_or_broken_file_is_one_clear_error(tmp_path, content, message):
    source = tmp_path / "w4.onnx"
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(UserError, match=message):
        pack_int4(source, tmp_path / "w4-int4.onnx")
    assert not (tmp_path / "w4-int4.onnx").exists()
