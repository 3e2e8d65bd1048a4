"""Load a detection checkpoint into an FP32, Conv+BN-fused model in ONNX export mode.

This is the only module that unpickles a checkpoint. Ultralytics releases (YOLOv8/10/11,
current layout) and the original THU-MIG/yolov10 release (pickled
`ultralytics.nn.tasks.YOLOv10DetectionModel`, fork 8.1.34) both come through here.
"""

import pickle
import re
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
    trusted: bool = False  # loaded with trust_checkpoint: an unrestricted unpickle that may have run code

    def describe(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "head": self.head,
            "imgsz": self.imgsz,
            "layout": self.layout,
            "classes": len(self.names),
            "names": [self.names[i] for i in sorted(self.names)],
            "random_weights": self.seeded,
            "trusted_load": self.trusted,
            **self.info,
        }


TRUST_HINT = (
    "yolo-w4 only loads tensors, torch.nn and Ultralytics modules "
    "(pass --trust-checkpoint / set trust_checkpoint: true only for a file you trust)"
)
# Plain values a checkpoint may hold besides modules and tensors (torch's weights_only unpickler
# already allows dict/list/tuple/set, OrderedDict, str/bytes/int/float/bool/None and tensor rebuilds).
_PLAIN_VALUES = (
    "datetime.datetime",
    "datetime.date",
    "datetime.timedelta",
    "datetime.timezone",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
    "pathlib.WindowsPath",
    "pathlib.PureWindowsPath",
)
# numpy scalars/arrays (e.g. a trainer's numpy.float64 fitness), under numpy 1.x and 2.x module names.
_NUMPY_VALUES = ("scalar", "_reconstruct")


def _classes_in(package: str, base: type | None) -> list:
    """Every class defined in `package` and its submodules (a subclass of `base` when given)."""
    import importlib
    import inspect
    import pkgutil

    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # an optional submodule whose own dependencies are absent
            continue
    found = {}
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and (base is None or issubclass(cls, base)):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


_ALLOWED: dict | None = None


def allowed_globals() -> dict:
    """What a checkpoint may name while unpickling without trust: full name -> object.

    torch.nn and Ultralytics module classes (everything a detection model is built from), the
    loss/assigner objects THU-MIG and older releases pickle with the model, Ultralytics' args
    namespace, a few plain value types, numpy scalars and arrays, the legacy names Ultralytics' own
    loader maps, and the YOLOv5 names legacy_yolov5 maps. Only classes: no function, no builtin.
    """
    global _ALLOWED
    if _ALLOWED is not None:
        return _ALLOWED
    import importlib

    import numpy as np
    from ultralytics.utils import IterableSimpleNamespace

    from yolo_w4.legacy_yolov5 import yolov5_classes

    allowed = {}
    allowed.update(_classes_in("torch.nn.modules", torch.nn.Module))
    allowed.update(_classes_in("ultralytics.nn.modules", torch.nn.Module))
    allowed.update(_classes_in("ultralytics.nn.tasks", torch.nn.Module))
    allowed.update(_classes_in("ultralytics.utils.loss", None))
    allowed.update(_classes_in("ultralytics.utils.tal", None))
    allowed["ultralytics.utils.IterableSimpleNamespace"] = IterableSimpleNamespace
    for name in _PLAIN_VALUES:
        module, _, attribute = name.rpartition(".")
        allowed[name] = getattr(importlib.import_module(module), attribute)
    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x / 2.x pickle names
        allowed.update({f"{prefix}.{name}": getattr(multiarray, name) for name in _NUMPY_VALUES})
    allowed["numpy.dtype"] = np.dtype
    allowed["numpy.ndarray"] = np.ndarray
    dtypes = getattr(np, "dtypes", None)
    allowed.update(
        {
            f"numpy.dtypes.{name}": cls
            for name, cls in vars(dtypes or object).items()
            if isinstance(cls, type) and issubclass(cls, np.dtype)
        }
    )
    for old, new in _LEGACY_ATTRIBUTES.items():
        module, _, attribute = new.rpartition(".")
        allowed[old] = getattr(importlib.import_module(module), attribute)
    for old, new in _LEGACY_MODULES.items():
        allowed.update(
            {old + name[len(new) :]: obj for name, obj in list(allowed.items()) if name.startswith(new + ".")}
        )
    allowed.update(yolov5_classes())
    _ALLOWED = allowed
    return allowed


def _python3_name(name: str) -> str:
    """A protocol-2 pickle's Python 2 name as the unpickler resolves it (commands.Popen -> subprocess.Popen)."""
    import _compat_pickle

    module, _, attribute = name.rpartition(".")
    module = module or "builtins"
    if (module, attribute) in _compat_pickle.NAME_MAPPING:
        return ".".join(_compat_pickle.NAME_MAPPING[module, attribute])
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attribute}"


def _refuse_unsafe(path: Path) -> None:
    """Scan the pickle's GLOBAL opcodes (nothing runs) and refuse the first one not allowed."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the weights_only load below refuses it instead
        return
    allowed = allowed_globals()
    for name in names:
        if name not in allowed:
            raise UserError(f"{path} wants to call {_python3_name(name)} while unpickling; {TRUST_HINT}")


def unpickle_checkpoint(path, trust: bool = False) -> dict:
    """torch.load a checkpoint file; every failure becomes one UserError line.

    Without `trust` only allowed_globals() may be named by the pickle (torch's weights_only
    unpickler with those as safe globals): a pickle that would call anything else (os.system,
    eval, ...) is refused before it is called. `trust=True` is the unrestricted torch.load.
    """
    from ultralytics.nn.tasks import temporary_modules

    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; point `checkpoint:` at the .pt file inside it")
    if not path.is_file():
        raise UserError(
            f"checkpoint not found: {path} (set `checkpoint:` in the config or pass --config checkpoint=PATH)"
        )
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes), not a PyTorch checkpoint; download or save it again")
    from yolo_w4.legacy_yolov5 import yolov5_modules

    try:
        if trust:
            with temporary_modules(modules=_LEGACY_MODULES, attributes=_LEGACY_ATTRIBUTES), yolov5_modules():
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
        else:
            if zipfile.is_zipfile(path):
                _refuse_unsafe(path)
            safe = [(obj, name) for name, obj in allowed_globals().items()]
            with torch.serialization.safe_globals(safe):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except ModuleNotFoundError as error:
        raise UserError(
            f"{path} needs the Python module '{error.name}' to unpickle; it is not an Ultralytics checkpoint "
            "this version can read (re-save it with a current Ultralytics release)"
        ) from error
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))  # torch's wording varies; builtins unqualified
        if unsafe and not trust:
            name = _python3_name(unsafe.group(1))
            raise UserError(f"{path} wants to call {name} while unpickling; {TRUST_HINT}") from error
        raise _not_a_checkpoint(path, error) from error
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, IndexError, KeyError, TypeError) as error:
        # (the weights_only unpickler fails on garbage with IndexError/KeyError/TypeError too)
        raise _not_a_checkpoint(path, error) from error
    if isinstance(ckpt, torch.nn.Module):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise UserError(
            f"{path} holds no model (expected a dict with a 'model' or 'ema' module, as Ultralytics saves); "
            "point `checkpoint:` at an Ultralytics detection .pt file"
        )
    return ckpt


def _not_a_checkpoint(path, error) -> UserError:
    return UserError(
        f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}); "
        "point `checkpoint:` at an Ultralytics .pt file"
    )


def unfused_model(path, trust: bool = False, ckpt: dict | None = None) -> torch.nn.Module:
    """The checkpoint's model before Conv+BN fusing (FP32, eval): its BatchNorm statistics intact.

    ckpt: an already unpickled checkpoint (one load per job); its model is copied, not changed.
    """
    if ckpt is not None:
        import copy

        return copy.deepcopy(ckpt.get("ema") or ckpt["model"]).float().eval()
    ckpt = unpickle_checkpoint(path, trust=trust)
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


def load_detector(
    path, head: str = "one2one", imgsz: int = 640, trust: bool = False, ckpt: dict | None = None
) -> Detector:
    """Load, select the head, fuse Conv+BN in FP32, and set export mode.

    `one2one` is YOLOv10's NMS-free head: export output (1, 300, 6) = x1, y1, x2, y2, score,
    class. `one2many` is the classic head: (1, 4 + classes, anchors), xywh plus class scores,
    which needs NMS. In Ultralytics 8.4 a loaded YOLOv10 reports end2end False, and fuse()
    deletes whichever branch is not selected, so the choice is made before fusing.
    `trust=True` unpickles without the allowlist (see unpickle_checkpoint).
    """
    if head not in HEADS:
        raise UserError(f"head must be one of {HEADS}, got {head!r} (config key `head`)")
    from yolo_w4.legacy_yolov5 import YOLOv5Model

    ckpt = ckpt if ckpt is not None else unpickle_checkpoint(path, trust=trust)  # ckpt: already loaded this job
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
        trusted=trust,
        info={"checkpoint_version": version or None, "architecture": _architecture(model)},
    )


def _architecture(model) -> str | None:
    yaml = getattr(model, "yaml", None) or {}
    return yaml.get("yaml_file") if isinstance(yaml, dict) else None
