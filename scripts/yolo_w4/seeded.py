"""Seeded, randomly initialised checkpoints built from Ultralytics' bundled YAMLs.

No trained YOLOv10 can be downloaded here, so the offline demo and the tests build one:
`torch.manual_seed(seed)`, the architecture YAML, and BatchNorm statistics set from the two
photos that ship with Ultralytics so activations have realistic ranges. The file is saved in
Ultralytics' checkpoint layout and marked `yolo_w4_seeded`, so every report can say its
metrics show the mechanics, not accuracy.
"""

import datetime
from pathlib import Path

import torch

import yolo_w4  # noqa: F401
from yolo_w4.files import atomic_path
from yolo_w4.preprocess import load_input


def asset_images() -> list[Path]:
    """The photos that ship inside the Ultralytics package (bus.jpg, zidane.jpg)."""
    from ultralytics.utils import ASSETS

    return sorted(ASSETS.glob("*.jpg"))


def coco_names() -> dict:
    from ultralytics.utils import ROOT, YAML

    return YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]


def build_seeded_checkpoint(out_path, arch: str = "yolov10n.yaml", seed: int = 0, imgsz: int = 640) -> Path:
    """Write a random-weight detection checkpoint for `arch` (any Ultralytics detect YAML)."""
    import ultralytics
    from ultralytics.nn.tasks import DetectionModel

    from yolo_w4.errors import UserError

    if not arch.endswith((".yaml", ".yml")):
        arch = f"{arch}.yaml"  # yolov10m: Ultralytics' bundled yolov10m.yaml
    torch.manual_seed(seed)
    try:
        model = DetectionModel(arch, nc=80, verbose=False)
    except (FileNotFoundError, AssertionError) as error:
        raise UserError(
            f"no Ultralytics architecture YAML {arch} ({error}); name a bundled one, e.g. yolov10m.yaml, or a YAML file"
        ) from error
    model.names = coco_names()
    batch = torch.cat([torch.from_numpy(load_input(path, imgsz)[0]) for path in asset_images()])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        model(batch)
        model(batch.flip(-1))
    model.eval()
    checkpoint = {
        "model": model.half(),
        "train_args": {"model": arch, "seed": seed},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "version": ultralytics.__version__,
        "yolo_w4_seeded": True,
    }
    with atomic_path(out_path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(out_path)
