"""Load original github ultralytics/yolov5 checkpoints (`models.yolo.Model`) without its source.

The pickle names `models.common.{Conv, C3, Bottleneck, SPPF, Concat}` and
`models.yolo.{Model, Detect}`. The five building blocks have the same attributes and
forward pass as Ultralytics' own modules, so they unpickle into those. The model and its
anchor-based head unpickle into the two small classes below, whose export-mode output
follows our one2many contract: (1, 4 + classes, anchors), xywh in input pixels, class score
= objectness x class probability.
"""

import contextlib
import sys
import types

import torch
from torch import nn

MODULES = ("models", "models.yolo", "models.common")


class YOLOv5Detect(nn.Module):
    """Stands in for `models.yolo.Detect` (v6.x): anchors in grid units, one 1x1 conv per level."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for level, conv in enumerate(self.m):
            p = conv(features[level])
            batch, _, ny, nx = p.shape
            p = p.view(batch, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            # Integer ranges cast afterwards: the ONNX exporter cannot trace an FP16 arange.
            ys, xs = torch.meshgrid(torch.arange(ny, device=p.device), torch.arange(nx, device=p.device), indexing="ij")
            ys, xs = ys.to(p.dtype), xs.to(p.dtype)
            grid = torch.stack((xs, ys), 2).view(1, 1, ny, nx, 2)
            anchors = (self.anchors[level] * self.stride[level]).to(p.dtype).view(1, self.na, 1, 1, 2)
            xy = (p[..., 0:2] * 2 - 0.5 + grid) * self.stride[level]
            wh = (p[..., 2:4] * 2) ** 2 * anchors
            scores = p[..., 5:] * p[..., 4:5]
            outputs.append(torch.cat((xy, wh, scores), -1).view(batch, -1, self.no - 1))
        return torch.cat(outputs, 1).permute(0, 2, 1)


class YOLOv5Model(nn.Module):
    """Stands in for `models.yolo.Model`: a Sequential run with YOLOv5's `from` indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = []
        for module in self.model:
            if module.f != -1:
                x = saved[module.f] if isinstance(module.f, int) else [x if j == -1 else saved[j] for j in module.f]
            x = module(x)
            saved.append(x if module.i in self.save else None)
        return x

    def fuse(self, verbose: bool = False) -> "YOLOv5Model":
        """Fold each Conv's BatchNorm into its convolution, as Ultralytics' fuse() does."""
        from ultralytics.nn.modules.conv import Conv
        from ultralytics.utils.torch_utils import fuse_conv_and_bn

        for module in self.modules():
            if isinstance(module, Conv) and hasattr(module, "bn"):
                module.conv = fuse_conv_and_bn(module.conv, module.bn)
                delattr(module, "bn")
                module.forward = module.forward_fuse
        return self


def yolov5_classes() -> dict:
    """The pickled YOLOv5 names and the classes they unpickle into ("models.yolo.Model": YOLOv5Model, ...)."""
    from ultralytics.nn.modules import C3, SPPF, Bottleneck, Concat, Conv

    common = {"Conv": Conv, "C3": C3, "Bottleneck": Bottleneck, "SPPF": SPPF, "Concat": Concat}
    return {
        "models.yolo.Model": YOLOv5Model,
        "models.yolo.Detect": YOLOv5Detect,
        **{f"models.common.{name}": cls for name, cls in common.items()},
    }


@contextlib.contextmanager
def yolov5_modules():
    """Make `models.yolo` / `models.common` resolvable while a YOLOv5 pickle is read."""
    if any(name in sys.modules for name in MODULES):  # a real yolov5 checkout is importable: do not shadow it
        yield
        return
    package, yolo, common = (types.ModuleType(name) for name in MODULES)
    modules = {"models.yolo": yolo, "models.common": common}
    for name, cls in yolov5_classes().items():
        module, _, attribute = name.rpartition(".")
        setattr(modules[module], attribute, cls)
    package.yolo, package.common = yolo, common
    sys.modules.update(dict(zip(MODULES, (package, yolo, common))))
    try:
        yield
    finally:
        for name in MODULES:
            sys.modules.pop(name, None)
