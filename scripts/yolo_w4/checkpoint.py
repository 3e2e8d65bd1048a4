"""Load a detection checkpoint into an FP32, Conv+BN-fused model in ONNX export mode.

This is the only module that unpickles a checkpoint. Ultralytics releases (YOLOv8/10/11,
current layout) and the original THU-MIG/yolov10 release (pickled
`ultralytics.nn.tasks.YOLOv10DetectionModel`, fork 8.1.34) both come through here.
"""

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

import yolo_w4  # noqa: F401  (offline switches before Ultralytics is imported)
from yolo_w4.errors import UserError
from yolo_w4.provenance import sha256

HEADS = ("one2one", "one2many")
MAX_DET = 300

# Module paths of older Ultralytics pickles, mapped as Ultralytics' own loader maps them.
_LEGACY_MODULES = {
    "ultralytics.yolo.utils": "ultralytics.utils",
    "ultralytics.yolo.v8": "ultralytics.models.yolo",
    "ultralytics.yolo.data": "ultralytics.data",
}
_LEGACY_ATTRIBUTES = {
    "ultralytics.nn.modules.block.Silence": "torch.nn.Identity",
    "ultralytics.nn.tasks.YOLOv10DetectionModel": "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.utils.loss.v10DetectLoss": "ultralytics.utils.loss.E2EDetectLoss",
}


@dataclass
class Detector:
    """A loaded detector and what later steps need to know about it."""

    model: torch.nn.Module
    path: str
    sha256: str
    head: str
    imgsz: int
    names: dict
    layout: str  # "ultralytics" or "thu-mig-yolov10"
    seeded: bool = False  # random weights made by yolo_w4.seeded (demo/tests)
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "head": self.head,
            "imgsz": self.imgsz,
            "layout": self.layout,
            "classes": len(self.names),
            "random_weights": self.seeded,
            **self.info,
        }


def unpickle_checkpoint(path) -> dict:
    """torch.load a checkpoint file; every failure becomes one UserError line."""
    from ultralytics.nn.tasks import temporary_modules

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint not found: {path} (set `checkpoint:` in the config or pass --config checkpoint=PATH)"
        )
    from yolo_w4.legacy_yolov5 import yolov5_modules

    try:
        with temporary_modules(modules=_LEGACY_MODULES, attributes=_LEGACY_ATTRIBUTES), yolov5_modules():
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        raise UserError(
            f"{path} needs the Python module '{error.name}' to unpickle; it is not an Ultralytics checkpoint "
            "this version can read (re-save it with a current Ultralytics release)"
        ) from error
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as error:
        raise UserError(
            f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
            "point `checkpoint:` at an Ultralytics .pt file"
        ) from error
    if isinstance(ckpt, torch.nn.Module):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise UserError(
            f"{path} holds no model (expected a dict with a 'model' or 'ema' module, as Ultralytics saves); "
            "point `checkpoint:` at an Ultralytics detection .pt file"
        )
    return ckpt


def unfused_model(path) -> torch.nn.Module:
    """The checkpoint's model before Conv+BN fusing (FP32, eval): its BatchNorm statistics intact."""
    ckpt = unpickle_checkpoint(path)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()


def _detection_model(ckpt: dict, path) -> torch.nn.Module:
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    from yolo_w4.legacy_yolov5 import YOLOv5Model

    model = ckpt.get("ema") or ckpt["model"]
    if isinstance(model, YOLOv5Model):
        model.stride = model.model[-1].stride = torch.as_tensor(model.stride).float()  # saved as FP16
        return model
    head = model.model[-1] if hasattr(model, "model") else None
    if type(model) is not DetectionModel or type(head).__name__ not in ("Detect", "v10Detect"):
        kind = type(model).__name__
        task = "classification" if "Classif" in kind else kind
        raise UserError(
            f"{path} is a {task} checkpoint ({kind}); yolo-w4 quantizes object-detection models "
            "(Ultralytics DetectionModel with a Detect/v10Detect head)"
        )
    assert isinstance(head, Detect)
    return model


def prepare_export(model: torch.nn.Module, imgsz: int, max_det: int = MAX_DET) -> torch.nn.Module:
    """Put a fused model into the state Ultralytics' ONNX exporter uses (static shapes, split C2f)."""
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.modules.head import Detect

    strides = torch.as_tensor(model.stride).tolist()
    for module in model.modules():
        if isinstance(module, Detect):
            module.dynamic = False
            module.export = True
            module.format = "onnx"
            module.max_det = min(max_det, sum(int(imgsz / s) ** 2 for s in strides))
            module.xyxy = False
            module.shape = None
        elif isinstance(module, C2f):
            module.forward = module.forward_split
    return model


def load_detector(path, head: str = "one2one", imgsz: int = 640) -> Detector:
    """Load, select the head, fuse Conv+BN in FP32, and set export mode.

    `one2one` is YOLOv10's NMS-free head: export output (1, 300, 6) = x1, y1, x2, y2, score,
    class. `one2many` is the classic head: (1, 4 + classes, anchors), xywh plus class scores,
    which needs NMS. In Ultralytics 8.4 a loaded YOLOv10 reports end2end False, and fuse()
    deletes whichever branch is not selected, so the choice is made before fusing.
    """
    if head not in HEADS:
        raise UserError(f"head must be one of {HEADS}, got {head!r} (config key `head`)")
    from yolo_w4.legacy_yolov5 import YOLOv5Model

    ckpt = unpickle_checkpoint(path)
    model = _detection_model(ckpt, path)
    legacy = isinstance(model, YOLOv5Model)
    has_one2one = getattr(model.model[-1], "one2one_cv2", None) is not None
    if head == "one2one" and not has_one2one:
        raise UserError(
            f"{path} has no one-to-one (NMS-free) head, so `head: one2one` cannot be used; set `head: one2many`"
        )
    if not legacy:
        model.end2end = head == "one2one"
    model = model.float().fuse(verbose=False).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    prepare_export(model, imgsz)
    if isinstance(model.names, (list, tuple)):
        model.names = dict(enumerate(model.names))
    version = str(ckpt.get("version", ""))
    if legacy:
        layout = "yolov5-legacy"
    elif version.startswith("8.1.") and "v10" in type(model.model[-1]).__name__:
        layout = "thu-mig-yolov10"
    else:
        layout = "ultralytics"
    seeded = bool(ckpt.get("yolo_w4_seeded", False))
    return Detector(
        model=model,
        path=str(path),
        sha256=sha256(path),
        head=head,
        imgsz=imgsz,
        names=dict(model.names),
        layout=layout,
        seeded=seeded,
        info={"checkpoint_version": version or None, "architecture": _architecture(model)},
    )


def _architecture(model) -> str | None:
    yaml = getattr(model, "yaml", None) or {}
    return yaml.get("yaml_file") if isinstance(yaml, dict) else None
