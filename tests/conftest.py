"""Shared fixtures: real data from ../shared/data, and a seeded YOLOv10n built once per session."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / "results" / ".ultralytics-tests"))

THUMIG = ("models", "yolov10n-thumig-layout-seed0.pt")
FALL_V8S = ("models", "fall-yolov8s-2class-ultralytics.pt")
VAL_IMAGES = ("coco2017", "source-data", "val2017")
VAL_ANNOTATIONS = ("coco2017", "source-data", "annotations", "instances_val2017.json")


def shared(*parts) -> Path:
    """A path in ../shared/data; skip without it, but fail under CI=true where it must exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing (real test data lives in ../shared/data, beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory) -> Path:
    from yolo_w4.seeded import build_seeded_checkpoint

    return build_seeded_checkpoint(tmp_path_factory.mktemp("seeded") / "yolov10n-seed0.pt", "yolov10n.yaml", 0)


@pytest.fixture(scope="session")
def detector(seeded_checkpoint):
    from yolo_w4.checkpoint import load_detector

    return load_detector(seeded_checkpoint, "one2one")


@pytest.fixture(scope="session")
def val_images() -> list[Path]:
    return sorted(shared(*VAL_IMAGES).glob("*.jpg"))


@pytest.fixture(scope="session")
def coco_photo(val_images):
    """One real COCO photo, letterboxed: (input tensor, mapping)."""
    from yolo_w4.preprocess import load_input

    return load_input(val_images[0])


def snakemake_jobs(log: str) -> dict[int, dict]:
    """{jobid: {rule, local, threads, resources, wildcards}} from the job descriptions Snakemake logs
    (a dry run's plan, or a run's stderr)."""
    import re

    jobs = {}
    for match in re.finditer(r"^(local)?rule (\w+):\n((?:    .*\n)+)", log, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(3), re.M))
        if "jobid" not in fields:
            continue
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs[int(fields["jobid"])] = {
            "rule": match.group(2),
            "local": bool(match.group(1)),
            "threads": int(fields.get("threads", 1)),
            "resources": resources,
            "wildcards": fields.get("wildcards", ""),
        }
    return jobs
