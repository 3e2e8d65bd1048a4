"""Metadata in every ONNX file we write, so that clients need not guess.

Ultralytics' exporter stores its keys in `metadata_props` (class names, stride, image size,
batch, task, whether the head is NMS-free) and its AutoBackend reads them back: without
them `YOLO("model.onnx")` calls the classes class0, class1, … and cannot tell a one2one
output from one that needs NMS. We write the same keys with the same meanings, plus our
provenance keys (`yolo_w4_*`), which Ultralytics ignores. No PyTorch here: the INT4 packing
rule's env has none.
"""


def read_metadata(model) -> dict:
    """{key: value} of an onnx.ModelProto's metadata_props (values are strings)."""
    return {prop.key: prop.value for prop in model.metadata_props}


def set_metadata(model, values: dict) -> None:
    """Set (or replace) metadata_props; values are written as str(value), as Ultralytics' exporter does."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
