"""What every JSON the workflow writes records: versions, input hashes, time."""

import datetime
import hashlib
import importlib.metadata
import platform
import sys
from pathlib import Path

PACKAGES = ("torch", "brevitas", "ultralytics", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pycocotools")


def sha256(path) -> str:
    """sha256 of a file, streamed so large checkpoints do not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict:
    """Installed versions of the packages that decide our numbers (None where absent)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if "onnxruntime" in sys.modules:  # the module that runs, whichever distribution (onnxruntime, -gpu) brought it
        found["onnxruntime"] = sys.modules["onnxruntime"].__version__
    from yolo_w4 import __version__

    found["yolo_w4"] = __version__
    return found


def input_record(paths: dict) -> dict:
    """{role: {path, sha256, bytes}} for each input file."""
    return {
        role: {"path": str(path), "sha256": sha256(path), "bytes": Path(path).stat().st_size}
        for role, path in paths.items()
    }


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
