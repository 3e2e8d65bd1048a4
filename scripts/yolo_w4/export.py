"""Export the FP baseline and the weight-quantized models to ONNX, and describe the result.

The quantized export is Brevitas' QCDQ form: each weight is an integer initializer, a Clip
that enforces the b-bit range, and a per-channel DequantizeLinear feeding a float Conv.
Activations stay floating point. Quantization always happens in FP32; FP16 export casts the
already-quantized model (scales and biases become FP16, integer weights do not change).
"""

import collections
import copy

import numpy as np
import onnx
import torch

from yolo_w4.files import atomic_path
from yolo_w4.names import FP
from yolo_w4.onnx_graph import graph_constants
from yolo_w4.torch_compat import onnx_export_kwargs

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
PRECISIONS = ("fp32", "fp16")


def _example_input(imgsz: int, precision: str, batch: int = 1) -> torch.Tensor:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return torch.zeros(batch, 3, imgsz, imgsz, dtype=dtype)


def _cast(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = copy.deepcopy(model)
    return model.half() if precision == "fp16" else model.float()


def model_metadata(
    detector, precision: str, variant: str = FP, settings: dict | None = None, batch: int = 1, bits_per_weight=None
) -> dict:
    """Ultralytics' exporter keys for this model (its AutoBackend reads them), plus our provenance keys.

    bits_per_weight: stored bits per conv weight, as the export record states it (`conv_bits_per_weight`).
    """
    import json

    import ultralytics

    from yolo_w4.names import describe_settings

    stride = getattr(detector.model, "stride", None)
    return {
        "description": f"yolo-w4 {variant} ({precision}) of {detector.path}",
        "author": "yolo-w4",
        "version": ultralytics.__version__,
        "stride": int(max(stride)) if stride is not None else 32,
        "task": "detect",
        "batch": batch,
        "imgsz": [detector.imgsz, detector.imgsz],
        "names": dict(detector.names),
        "channels": 3,
        "end2end": detector.head == "one2one",  # NMS-free (1, 300, 6) output: clients must not run NMS
        "args": {"batch": batch, "half": precision == "fp16", "nms": False, "dynamic": False, "imgsz": detector.imgsz},
        "yolo_w4_variant": variant,
        "yolo_w4_format": "qcdq" if settings else "float",
        "yolo_w4_head": detector.head,
        "yolo_w4_precision": precision,
        "yolo_w4_checkpoint_sha256": detector.sha256,
        "yolo_w4_recipe": describe_settings(settings),
        "yolo_w4_bits_per_weight": bits_per_weight,
        "yolo_w4_settings": json.dumps(settings, sort_keys=True, default=str) if settings else "null",
    }


def conv_bits_per_weight(quantized_record: dict | None, precision: str) -> float:
    """Stored bits per conv weight: the quantized summary's (integers + FP16 scales), or the float width."""
    if quantized_record:
        return quantized_record["summary"]["bits_per_weight"]
    return 16 if precision == "fp16" else 32


def _stamp(path, metadata: dict | None) -> None:
    if metadata:
        from yolo_w4.onnx_graph import set_metadata

        model = onnx.load(str(path))
        set_metadata(model, metadata)
        onnx.save(model, str(path))


def export_fp(
    model: torch.nn.Module,
    path,
    imgsz: int = 640,
    precision: str = "fp32",
    batch: int = 1,
    metadata: dict | None = None,
) -> None:
    """FP baseline with torch's TorchScript exporter (the same settings as the QCDQ export)."""
    with atomic_path(path) as tmp:
        _torch_export(model, tmp, imgsz, precision, batch)
        _stamp(tmp, metadata)
        onnx.checker.check_model(str(tmp), full_check=True)


def _torch_export(model: torch.nn.Module, path, imgsz: int, precision: str, batch: int) -> None:
    model = _cast(model, precision)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (_example_input(imgsz, precision, batch),),
            str(path),
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
            **onnx_export_kwargs(),
        )


def snap_to_grid(model: torch.nn.Module) -> torch.nn.Module:
    """Set each quantized conv's float weight to its dequantized FP32 value (integer x scale), in place.

    Brevitas re-derives the integers from the float weight on every forward; cast to FP16, a
    weight near a rounding boundary would round the other way (0.1% of YOLOv10n's weights
    under round-to-nearest). On the grid, every integer survives the cast.
    """
    with torch.no_grad():
        for module in model.modules():
            quant = getattr(module, "weight_quant", None)
            if quant is not None and quant.is_quant_enabled:
                module.weight.copy_(module.quant_weight().value)
    return model


def export_qcdq(
    model: torch.nn.Module,
    path,
    imgsz: int = 640,
    precision: str = "fp32",
    batch: int = 1,
    metadata: dict | None = None,
) -> None:
    """Quantized model as QCDQ ONNX (integer weights, Clip, DequantizeLinear, float Conv).

    FP16 casts the model after snapping its weights to the FP32 grid: the same integers as FP32.
    """
    from brevitas.export import export_onnx_qcdq

    model = _cast(snap_to_grid(copy.deepcopy(model)) if precision == "fp16" else model, precision)
    with atomic_path(path) as tmp, torch.no_grad():
        export_onnx_qcdq(
            model,
            args=_example_input(imgsz, precision, batch),
            export_path=str(tmp),
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            **onnx_export_kwargs(),
        )
        _stamp(tmp, metadata)
        onnx.checker.check_model(str(tmp), full_check=True)


GROUPWISE_OPSET = 21  # DequantizeLinear's block_size (blocked quantization) is opset 21


def _plain_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """A copy with every GroupQuantConv2d replaced by a Conv2d holding its dequantized weight, and
    {layer: (integers (out, n) int8, scales (out, groups), group_size, qmin, qmax)} of those layers."""
    from yolo_w4.groupwise import groupwise_layers

    plain = copy.deepcopy(model)
    quantized = {}
    with torch.no_grad():
        for name, module in groupwise_layers(plain).items():
            conv = torch.nn.Conv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, bias=True, padding_mode=module.padding_mode,
            )  # fmt: skip
            conv.weight.copy_(module.quant_weight().value)
            conv.bias.copy_(module.bias)
            plain.set_submodule(name, conv)
            integers = module.integers().reshape(module.out_channels, -1).to(torch.int8)
            quantized[name] = (integers.numpy(), module.scale.detach().float().numpy(), module.group_size,
                               module.qmin, module.qmax)  # fmt: skip
    return plain.eval(), quantized


def export_groupwise(
    model: torch.nn.Module,
    path,
    imgsz: int = 640,
    precision: str = "fp32",
    batch: int = 1,
    metadata: dict | None = None,
) -> None:
    """Group-wise quantized model as ONNX opset 21, QCDQ-style, written from its integers.

    Brevitas' exporter refuses per-group scales, so the model is exported with its dequantized
    weights and each group-wise conv's weight initializer is then replaced by: int8 integers
    (out, in*kh*kw) -> Clip [qmin, qmax] -> DequantizeLinear(axis=1, block_size=group_size,
    scales (out, groups) stored as FP16, Cast to FP32 in an FP32 file) -> Reshape (out, in, kh, kw)
    -> Conv. INT4 packing (pack_int4) then works on it as on a per-channel QCDQ file.
    """
    from onnx import helper, numpy_helper, version_converter

    from yolo_w4.onnx_graph import set_metadata

    plain, quantized = _plain_copy(model)
    with atomic_path(path) as tmp:
        _torch_export(plain, tmp, imgsz, precision, batch)
        proto = version_converter.convert_version(onnx.load(str(tmp)), GROUPWISE_OPSET)
        graph = proto.graph
        initializers = {init.name: init for init in graph.initializer}
        nodes, replaced = [], set()
        for conv in [node for node in graph.node if node.op_type == "Conv"]:
            layer = conv.input[1].removesuffix(".weight")
            if layer not in quantized or conv.input[1] not in initializers:
                continue
            integers, scales, group_size, low, high = quantized[layer]
            shape = list(numpy_helper.to_array(initializers[conv.input[1]]).shape)
            parts = ("int", "min", "max", "clipped", "scale", "scale_cast", "dq", "shape")
            names = {part: f"{layer}.weight_{part}" for part in parts}
            graph.initializer.extend(
                [
                    numpy_helper.from_array(integers, names["int"]),
                    numpy_helper.from_array(np.array(low, np.int8), names["min"]),
                    numpy_helper.from_array(np.array(high, np.int8), names["max"]),
                    numpy_helper.from_array(scales.astype(np.float16), names["scale"]),  # FP16 values (groupwise.py)
                    numpy_helper.from_array(np.array(shape, np.int64), names["shape"]),
                ]
            )
            scale = names["scale"]
            if precision == "fp32":  # dequantize in FP32 (exact), from the FP16 scales stored
                nodes.append(helper.make_node("Cast", [scale], [names["scale_cast"]], to=onnx.TensorProto.FLOAT))
                scale = names["scale_cast"]
            nodes += [
                helper.make_node("Clip", [names["int"], names["min"], names["max"]], [names["clipped"]]),
                helper.make_node(
                    "DequantizeLinear", [names["clipped"], scale], [names["dq"]], axis=1, block_size=group_size
                ),
                helper.make_node("Reshape", [names["dq"], names["shape"]], [conv.input[1]]),
            ]
            replaced.add(conv.input[1])
        if len(replaced) != len(quantized):
            raise RuntimeError(f"export_groupwise found {len(replaced)} of {len(quantized)} group-wise conv weights")
        for name in replaced:
            graph.initializer.remove(initializers[name])
        for node in reversed(nodes):  # constants only: ahead of every other node keeps the graph sorted
            graph.node.insert(0, node)
        if metadata:
            set_metadata(proto, metadata)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def _io_shapes(values) -> dict:
    shapes = {}
    for value in values:
        tensor = value.type.tensor_type
        shapes[value.name] = {
            "shape": [dim.dim_value or dim.dim_param for dim in tensor.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        }
    return shapes


def _weight_consumers(consumers, name) -> list:
    """Nodes that take `name` as their weight input, looking through Cast (FP16 exports) and Reshape (group-wise)."""
    found = []
    for node in consumers[name]:
        if node.op_type in ("Cast", "Reshape") and node.input[0] == name:
            found += _weight_consumers(consumers, node.output[0])
        elif len(node.input) > 1 and node.input[1] == name:
            found.append(node)
    return found


def onnx_summary(path) -> dict:
    """Node counts, I/O, and for every weight Clip -> DequantizeLinear -> Conv the integer range."""
    model = onnx.load(str(path))
    graph = model.graph
    constants = graph_constants(graph)
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    producers = {out: node for node in graph.node for out in node.output}
    weight_clips = []
    for node in graph.node:
        if node.op_type != "Clip" or node.input[0] not in constants:
            continue
        dequant = [n for n in consumers[node.output[0]] if n.op_type == "DequantizeLinear"]
        convs = [c for d in dequant for c in _weight_consumers(consumers, d.output[0]) if c.op_type == "Conv"]
        if not convs:
            continue
        weight = constants[node.input[0]]
        scale = _source_constant(dequant[0].input[1], constants, producers)  # through the Cast of FP16 group scales
        weight_clips.append(
            {
                "layer": convs[0].input[2].removesuffix(".bias") if len(convs[0].input) > 2 else convs[0].name,
                "int_dtype": weight.dtype.name,
                "min": int(np.asarray(constants[node.input[1]])),
                "max": int(np.asarray(constants[node.input[2]])),
                "channels": int(np.size(scale)) if scale is not None else None,  # scales (groups: out x groups)
                "scale_dtype": scale.dtype.name if scale is not None else None,
                "block_size": next((a.i for a in dequant[0].attribute if a.name == "block_size"), None),
                "values_min": int(weight.min()),
                "values_max": int(weight.max()),
                "weights": int(weight.size),
            }
        )
    counts = collections.Counter(node.op_type for node in graph.node)
    conv_weights = {
        node.name: _weight_size(node.input[1], constants, producers) for node in graph.node if node.op_type == "Conv"
    }
    # The DFL conv (node /model.N/dfl/conv/Conv) is a fixed projection, never quantized.
    quantizable = sum(size for name, size in conv_weights.items() if "/dfl/" not in name)
    four_bit = sum(c["weights"] for c in weight_clips if c["max"] - c["min"] + 1 <= 16)
    return {
        "opset": max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")),
        "nodes": sum(counts.values()),
        "node_counts": {op: counts.get(op, 0) for op in ("Conv", "DequantizeLinear", "QuantizeLinear", "Clip")},
        "inputs": _io_shapes(graph.input),
        "outputs": _io_shapes(graph.output),
        "weight_clips": weight_clips,
        "weight_clip_ranges": sorted({(c["min"], c["max"]) for c in weight_clips}),
        "conv_weights": sum(conv_weights.values()),
        "weights_4bit_fraction": round(four_bit / quantizable, 6) if quantizable else 0.0,  # at most 4 bits (2, 3 or 4)
    }


def _source_constant(name, constants, producers):
    """The constant a tensor is made from, following each producer's first input (Cast, DequantizeLinear,
    Clip, Reshape); None if it is not made from one."""
    while name not in constants and name in producers:
        name = producers[name].input[0]
    return constants.get(name)


def _weight_size(name, constants, producers) -> int:
    """Element count of a Conv weight, looking back through Cast / DequantizeLinear / Clip / Reshape."""
    weight = _source_constant(name, constants, producers)
    return int(np.size(weight)) if weight is not None else 0
