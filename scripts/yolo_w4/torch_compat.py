"""The one place that knows how torch.onnx.export's keywords differ between torch versions."""

import inspect

import torch


def onnx_export_kwargs() -> dict:
    """Keywords for the TorchScript-based exporter that Brevitas' QCDQ manager drives.

    torch >= 2.5 has a `dynamo` switch (default True from 2.9); Brevitas' QCDQ export needs
    the TorchScript path, so ask for it explicitly where the switch exists. Initializers must
    not be graph inputs, or ONNX Runtime cannot constant-fold the dequantized weights.
    """
    kwargs = {"keep_initializers_as_inputs": False}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    return kwargs
