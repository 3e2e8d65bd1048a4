"""Reading ONNX graphs without PyTorch: their constants, and the metadata every file we write carries.

Metadata, so that clients need not guess:

Ultralytics' exporter stores its keys in `metadata_props` (class names, stride, image size,
batch, task, whether the head is NMS-free) and its AutoBackend reads them back: without
them `YOLO("model.onnx")` calls the classes class0, class1, … and cannot tell a one2one
output from one that needs NMS. We write the same keys with the same meanings, plus our
provenance keys (`yolo_w4_*`), which Ultralytics ignores. No PyTorch here: the INT4 packing
rule's env has none.
"""

from onnx import numpy_helper


def graph_constants(graph) -> dict:
    """{name: numpy array} of a graph's initializers and Constant node outputs."""
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return constants


def read_metadata(model) -> dict:
    """{key: value} of an onnx.ModelProto's metadata_props (values are strings)."""
    return {prop.key: prop.value for prop in model.metadata_props}


def set_metadata(model, values: dict) -> None:
    """Set (or replace) metadata_props; values are written as str(value), as Ultralytics' exporter does."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
