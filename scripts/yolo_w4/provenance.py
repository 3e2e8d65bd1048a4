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
    found["yolo_w4_commit"] = workflow_commit()
    return found


_COMMIT = None


def workflow_commit() -> str:
    """The git commit of the yolo-w4 checkout that ran (`+dirty` with uncommitted changes), or 'not a git checkout'."""
    global _COMMIT
    if _COMMIT is None:
        import subprocess

        root = Path(__file__).resolve().parents[2]
        try:
            head = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            ok = head.returncode == 0 and dirty.returncode == 0
            _COMMIT = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if ok else "not a git checkout"
        except (OSError, subprocess.SubprocessError):
            _COMMIT = "not a git checkout"
    return _COMMIT


def input_record(paths: dict) -> dict:
    """{role: {path, sha256, bytes}} for each input file."""
    return {
        role: {"path": str(path), "sha256": sha256(path), "bytes": Path(path).stat().st_size}
        for role, path in paths.items()
    }


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
