"""Pack a QCDQ model's 4-bit weights into ONNX INT4 initializers: the file 4-bit weights buy.

Brevitas' QCDQ export stores every quantized weight as an int8 initializer followed by a
Clip to its b-bit range and a per-channel DequantizeLinear, so a W4 file is no smaller than
a W8 one. ONNX opset 21 has 4-bit tensor types (INT4, UINT4: two values per byte) that
DequantizeLinear reads directly. Here each weight whose Clip range fits in 4 bits becomes an
INT4 (or UINT4, asymmetric grids) initializer feeding its DequantizeLinear, the Clip goes,
and the model moves to opset 21. Weights outside 4 bits (8-bit layers of mixed variants)
keep their int8 QCDQ form. Nothing else is stored wider than it needs: FP32 constants whose
values are all exact in FP16 (the head's anchor strides) are stored as FP16 with a Cast back,
and the shapes the version converter infers are not kept (ONNX Runtime infers them again).
The integers, scales and graph are otherwise unchanged, so ONNX Runtime computes exactly the
same outputs (checked by `pack_step`).
"""

import collections
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path
from yolo_w4.onnx_graph import graph_constants, read_metadata, set_metadata

INT4_OPSET = 21  # first opset whose DequantizeLinear takes INT4 / UINT4
INT4_IR_VERSION = 10  # first IR version with the 4-bit element types
NARROW_MIN_VALUES = 64  # smaller FP32 constants stay: a Cast node costs more than it saves


def pack_nibbles(values: np.ndarray) -> bytes:
    """Two's-complement (or unsigned) 4-bit values, two per byte, first value in the low nibble (ONNX layout)."""
    nibbles = (values.astype(np.int16).reshape(-1) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def _four_bit_type(weight: np.ndarray, low: int, high: int):
    """INT4 / UINT4 when the Clip range of this integer weight fits in 4 bits, else None."""
    if weight.dtype == np.int8 and low >= -8 and high <= 7:
        return TensorProto.INT4
    if weight.dtype == np.uint8 and low >= 0 and high <= 15:
        return TensorProto.UINT4
    return None


def _drop_unused(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _fp16_exact(values: np.ndarray) -> bool:
    return (
        values.dtype == np.float32
        and values.size >= NARROW_MIN_VALUES
        and np.array_equal(values.astype(np.float16).astype(np.float32), values)
    )


def narrow_exact_constants(graph) -> int:
    """Store FP32 constants that FP16 holds exactly as FP16 + Cast to FP32; returns how many bytes that saved.

    Lossless by construction (every value round-trips), so the graph computes the same.
    """
    saved, first = 0, 0
    for node in list(graph.node):
        if node.op_type != "Constant" or not node.attribute or node.attribute[0].name != "value":
            continue
        values = numpy_helper.to_array(node.attribute[0].t)
        if not _fp16_exact(values):
            continue
        name = node.output[0]
        narrow = numpy_helper.from_array(values.astype(np.float16), f"{name}_fp16")
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node("Constant", [], [narrow.name], value=narrow))
        graph.node.insert(index + 1, helper.make_node("Cast", [narrow.name], [name], to=TensorProto.FLOAT))
        saved += values.nbytes // 2
    for init in [i for i in graph.initializer if i.data_type == TensorProto.FLOAT]:
        values = numpy_helper.to_array(init)
        if not _fp16_exact(values):
            continue
        name = init.name
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float16), f"{name}_fp16"))
        graph.node.insert(first, helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
        first += 1
        saved += values.nbytes // 2
    return saved


def pack_int4(qcdq_path, output) -> dict:
    """QCDQ ONNX -> the same model with INT4 weights; returns how many weights were packed, how many kept."""
    if not Path(qcdq_path).is_file():
        raise UserError(f"ONNX file not found: {qcdq_path} (pass the QCDQ export of a quantized variant)")
    try:
        model = onnx.load(str(qcdq_path))
    except Exception as error:  # protobuf raises several kinds on a file that is not ONNX
        raise UserError(
            f"{qcdq_path} is not an ONNX model ({type(error).__name__}); pass a *-qcdq-ptq.onnx export"
        ) from None
    metadata = read_metadata(model)  # the version converter does not carry metadata_props over
    model = version_converter.convert_version(model, INT4_OPSET)
    model.ir_version = max(model.ir_version, INT4_IR_VERSION)
    set_metadata(model, {**metadata, **({"yolo_w4_format": "int4"} if metadata else {})})
    graph = model.graph
    if any(init.data_type in (TensorProto.INT4, TensorProto.UINT4) for init in graph.initializer):
        raise UserError(f"{qcdq_path} is already INT4-packed: pack the QCDQ export (*-qcdq-ptq.onnx) instead")
    constants = graph_constants(graph)
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    weight_clips = [
        node
        for node in graph.node
        if node.op_type == "Clip"
        and len(node.input) == 3
        and all(name in constants for name in node.input)
        and consumers[node.output[0]]
        and all(c.op_type == "DequantizeLinear" for c in consumers[node.output[0]])
    ]
    if not weight_clips:
        raise UserError(
            f"{qcdq_path} has no quantized weights (no Clip -> DequantizeLinear on an integer initializer): "
            "pack the QCDQ export of a quantized variant, not an FP model"
        )
    packed, kept, packed_weights, new = [], [], 0, []
    for clip in weight_clips:
        weight = constants[clip.input[0]]
        low, high = int(constants[clip.input[1]]), int(constants[clip.input[2]])
        element = _four_bit_type(weight, low, high)
        if element is None:
            kept.append(clip.output[0])
            continue
        name = f"{clip.output[0]}_int4"
        new.append(helper.make_tensor(name, element, weight.shape, pack_nibbles(np.clip(weight, low, high)), raw=True))
        for dequant in consumers[clip.output[0]]:
            dequant.input[0] = name
            if len(dequant.input) > 2:  # the zero point must have the weight's (now 4-bit) type
                zero_point = constants[dequant.input[2]]
                dequant.input[2] = f"{dequant.output[0]}_zero_point_int4"
                new.append(
                    helper.make_tensor(dequant.input[2], element, zero_point.shape, pack_nibbles(zero_point), raw=True)
                )
        graph.node.remove(clip)
        packed.append(clip.output[0])
        packed_weights += int(weight.size)

    graph.initializer.extend(new)
    _drop_unused(graph)
    narrowed = narrow_exact_constants(graph)
    del graph.value_info[:]  # inferred by the version converter; ONNX Runtime infers them itself
    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return {
        "opset": INT4_OPSET,
        "layers_packed": len(packed),
        "layers_kept_int8": len(kept),
        "weights_packed": packed_weights,
        "fp16_exact_bytes_saved": narrowed,
    }
