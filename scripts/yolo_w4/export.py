"""Export the FP baseline and the weight-quantized models to ONNX, and describe the result.

The quantized export is the QCDQ form Brevitas writes: each weight is an integer initializer,
a Clip that enforces the b-bit range, and a per-channel (or per-group) DequantizeLinear feeding
a float Conv; `export_qcdq` writes it from the quantized integers itself. Activations stay
floating point. Quantization always happens in FP32; an FP16 file has FP16 activations and
biases, and exactly the integers of the FP32 file.
"""

import collections
import contextlib
import copy

import numpy as np
import onnx
import torch

from yolo_w4.files import atomic_path
from yolo_w4.grid import per_weight
from yolo_w4.names import FP
from yolo_w4.onnx_graph import graph_constants
from yolo_w4.quantize import weight_bits
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


GROUPWISE_OPSET = 21  # DequantizeLinear's block_size (blocked quantization) is opset 21


def _weight_integers(module, quant) -> dict:
    """How one quantized conv's weight is stored: its integers, scales, zero points, range and layout.

    Brevitas per-channel layers: integers shaped like the weight (int8, uint8 for asymmetric grids),
    FP32 scales along axis 0, zero points only where the grid has them. Group-wise layers
    (groupwise.GroupQuantConv2d): int8 (out, in*kh*kw), FP16 scales (out, groups) along axis 1 in
    blocks of group_size, reshaped to the weight's shape after dequantizing; asymmetric groups
    store uint8 0..15 with a uint8 zero point (out, groups) in the same blocks. quant: the layer's
    `quant_weight()` (Brevitas layers read theirs; group-wise layers hold their integers).
    """
    from brevitas.function.ops import max_int, min_int

    if hasattr(module, "group_size"):
        integers = module.integers().reshape(module.out_channels, -1)
        zero_point = None
        if module.zero_point is not None:  # asymmetric: stored = integer + zero point, in [0, 2^bits - 1]
            integers = integers + module.per_weight(module.zero_point).reshape(module.out_channels, -1)
            zero_point = module.zero_point.detach().to(torch.uint8).numpy()
        return {
            "integers": integers.detach().to(torch.int8 if zero_point is None else torch.uint8).numpy(),
            "scale": module.scale.detach().numpy().astype(np.float16),  # FP16 values (groupwise.py)
            "zero_point": zero_point,
            "range": (module.qmin, module.qmax),
            "axis": 1,
            "block_size": module.group_size,
            "shape": list(module.weight.shape),
        }
    dtype = torch.int8 if quant.signed else torch.uint8
    # value = (integer - zero point) x scale: recovered by one division (QuantTensor.int() costs 10x more)
    integers = torch.round(quant.value / quant.scale + quant.zero_point).detach().to(dtype)
    zero_point = quant.zero_point.detach().reshape(-1).expand(module.out_channels).to(dtype)
    proxy = module.weight_quant
    bits, narrow = quant.bit_width, proxy.is_narrow_range
    return {
        "integers": integers.numpy(),
        "scale": quant.scale.detach().reshape(-1).float().numpy(),
        "zero_point": zero_point.numpy() if (not quant.signed or bool(zero_point.any())) else None,
        "range": (int(min_int(quant.signed, narrow, bits)), int(max_int(quant.signed, narrow, bits))),
        "axis": 0,
        "block_size": None,
        "shape": None,
    }


def quantized_weights(model: torch.nn.Module) -> dict:
    """{layer: how its weight is stored (`_weight_integers`)} for every quantized conv of a PTQ model.

    The quantize step saves this beside the state dict, so the export needs neither Brevitas nor a rebuild.
    """
    with torch.no_grad():
        return {
            name: _weight_integers(module, module.quant_weight())
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Conv2d) and weight_bits(module) is not None
        }


def dequantize(weight: dict) -> torch.Tensor:
    """The FP32 weight a stored layer stands for: (integers - zero point) x scale, the product Brevitas
    (and groupwise.py) computes, so it is bit for bit the weight the quantized model runs with."""
    integers = torch.from_numpy(weight["integers"]).float()
    scale = torch.from_numpy(weight["scale"]).float()
    if weight["block_size"]:
        block, width = weight["block_size"], integers.shape[1]
        element = per_weight(scale, block, width)
        if weight["zero_point"] is not None:
            integers = integers - per_weight(torch.from_numpy(weight["zero_point"]).float(), block, width)
        return (integers * element).reshape(weight["shape"])
    if weight["zero_point"] is not None:
        integers = integers - torch.from_numpy(weight["zero_point"]).float().view(-1, 1, 1, 1)
    return integers * scale.view(-1, 1, 1, 1)


@contextlib.contextmanager
def _dequantized(model: torch.nn.Module, weights: dict):
    """`model` with each conv named in `weights` swapped for a Conv2d holding its dequantized FP32
    weight; the original convs are put back on exit. In place: a deep copy of a Brevitas model
    costs more than the swap."""
    swapped = {}
    try:
        with torch.no_grad():
            for name, weight in weights.items():
                module = model.get_submodule(name)
                conv = torch.nn.Conv2d(
                    module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, bias=True, padding_mode=module.padding_mode,
                )  # fmt: skip
                conv.weight.copy_(dequantize(weight))
                conv.bias.copy_(module.bias if module.bias is not None else torch.zeros_like(conv.bias))
                swapped[name] = module
                model.set_submodule(name, conv.eval())
        yield model
    finally:
        for name, module in swapped.items():
            model.set_submodule(name, module)


def export_qcdq(
    model: torch.nn.Module,
    path,
    imgsz: int = 640,
    precision: str = "fp32",
    batch: int = 1,
    metadata: dict | None = None,
    weights: dict | None = None,
) -> None:
    """Weight-quantized model as QCDQ ONNX, written from its integers.

    weights: `quantized_weights` of the model, as the quantize step saved them; with them `model`
    may be the plain model `quantized_checkpoint.load_dequantized` returns (no Brevitas).

    The model is exported with its dequantized weights (torch.onnx, as the FP baseline), then each
    quantized conv's weight initializer is replaced by: integers -> Clip [qmin, qmax] ->
    DequantizeLinear -> Conv, the form Brevitas' QCDQ exporter writes (which re-quantizes every
    weight several times over: 48 s against 11 s on YOLOv10m, and refuses group-wise scales).
    Per channel: axis 0, FP32 scales, opset 17; FP16 files Cast the dequantized FP32 weight to FP16.
    Group-wise: int8 (out, in*kh*kw), DequantizeLinear(axis=1, block_size) over FP16 scales (a Cast
    to FP32 in FP32 files), Reshape to the weight's shape; opset 21. The integers never depend on
    `precision`: they are taken from the FP32 model. INT4 packing (pack_int4) works on either.
    """
    from onnx import helper, numpy_helper, version_converter

    from yolo_w4.onnx_graph import set_metadata

    stored = quantized_weights(model) if weights is None else weights
    with atomic_path(path) as tmp:
        with _dequantized(model, stored) as plain:
            _torch_export(plain, tmp, imgsz, precision, batch)
        grouped = any(layer["block_size"] for layer in stored.values())
        proto = onnx.load(str(tmp))
        if grouped:
            proto = version_converter.convert_version(proto, GROUPWISE_OPSET)
        graph = proto.graph
        initializers = {init.name: init for init in graph.initializer}
        nodes, replaced = [], set()
        for conv in [node for node in graph.node if node.op_type == "Conv"]:
            layer = conv.input[1].removesuffix(".weight")
            if layer not in stored or conv.input[1] not in initializers:
                continue
            nodes += _dequantize_nodes(graph, layer, stored[layer], precision, conv.input[1], helper, numpy_helper)
            replaced.add(conv.input[1])
        if len(replaced) != len(stored):
            raise RuntimeError(f"export_qcdq found {len(replaced)} of {len(stored)} quantized conv weights")
        for name in replaced:
            graph.initializer.remove(initializers[name])
        for node in reversed(nodes):  # constants only: ahead of every other node keeps the graph sorted
            graph.node.insert(0, node)
        if metadata:
            set_metadata(proto, metadata)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def _dequantize_nodes(graph, layer: str, weight: dict, precision: str, output: str, helper, numpy_helper) -> list:
    """Add one conv's integer, range and scale initializers to `graph`; return the nodes that make `output`."""
    parts = ("int", "min", "max", "clipped", "scale", "scale_cast", "zero_point", "dq", "dq_cast", "shape")
    names = {part: f"{layer}.weight_{part}" for part in parts}
    integers = weight["integers"]
    low, high = (np.array(v, integers.dtype) for v in weight["range"])
    graph.initializer.extend(
        [
            numpy_helper.from_array(integers, names["int"]),
            numpy_helper.from_array(low, names["min"]),
            numpy_helper.from_array(high, names["max"]),
            numpy_helper.from_array(weight["scale"], names["scale"]),
        ]
    )
    nodes = [helper.make_node("Clip", [names["int"], names["min"], names["max"]], [names["clipped"]])]
    scale = names["scale"]
    if weight["scale"].dtype == np.float16 and precision == "fp32":  # dequantize in FP32 (exact) from FP16 scales
        nodes.append(helper.make_node("Cast", [scale], [names["scale_cast"]], to=onnx.TensorProto.FLOAT))
        scale = names["scale_cast"]
    inputs = [names["clipped"], scale]
    if weight["zero_point"] is not None:
        graph.initializer.append(numpy_helper.from_array(weight["zero_point"], names["zero_point"]))
        inputs.append(names["zero_point"])
    block = {"block_size": weight["block_size"]} if weight["block_size"] else {}
    dequantized = names["dq"]
    nodes.append(helper.make_node("DequantizeLinear", inputs, [dequantized], axis=weight["axis"], **block))
    if weight["scale"].dtype == np.float32 and precision == "fp16":  # FP32 dequantization, FP16 conv
        nodes.append(helper.make_node("Cast", [dequantized], [names["dq_cast"]], to=onnx.TensorProto.FLOAT16))
        dequantized = names["dq_cast"]
    if weight["shape"]:
        graph.initializer.append(numpy_helper.from_array(np.array(weight["shape"], np.int64), names["shape"]))
        nodes.append(helper.make_node("Reshape", [dequantized, names["shape"]], [output]))
    else:
        nodes[-1].output[0] = output
    return nodes


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
