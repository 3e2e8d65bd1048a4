"""Every bad input in one table: the real CLI or a real `snakemake` run, one line, no artifact left.

A row: how to make the input, where it goes in (cli or snakemake), the exit code, the one
error line expected (a regex), and what must not exist afterwards. Loading cases go through
both entries. Config-only cases live in test_workflow.py's parametrized table.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, VAL_ANNOTATIONS, VAL_IMAGES, shared
from test_workflow import error_lines, small_config, snakemake

RUN_ID = "pytest-bad-inputs"
FP_METRICS = f"results/{RUN_ID}/metrics/yolov10n-seed0-fp.json"  # the shortest path through export and scoring


class Payload:
    """Pickles as os.system(command): code that would run while the checkpoint loads."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def evil_checkpoint(tmp_path, seeded_checkpoint):
    from yolo_w4.checkpoint import unpickle_checkpoint

    ckpt = unpickle_checkpoint(seeded_checkpoint)
    ckpt["x"] = Payload(f"touch {tmp_path / 'pwned'}")
    path = tmp_path / "yolov10n-seed0.pt"
    torch.save(ckpt, path)
    return path


def not_a_checkpoint(tmp_path, _):
    path = tmp_path / "yolov10n-seed0.pt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a checkpoint")
    return path


def coco_copy(tmp_path, edit_images=None, edit_annotations=None):
    """A one-image COCO folder copied from ../shared/data, optionally broken."""
    photo = sorted(shared(*VAL_IMAGES).glob("*.jpg"))[0]
    coco = json.loads(shared(*VAL_ANNOTATIONS).read_text())
    image = next(i for i in coco["images"] if i["file_name"] == photo.name)
    annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    folder = tmp_path / "val2017"
    folder.mkdir()
    data = photo.read_bytes()
    (folder / photo.name).write_bytes(edit_images(data) if edit_images else data)
    subset = {"images": [image], "annotations": annotations, "categories": coco["categories"]}
    if edit_annotations:
        edit_annotations(subset)
    (tmp_path / "instances.json").write_text(json.dumps(subset))
    return {"images": str(folder), "annotations": str(tmp_path / "instances.json"), "max_images": 1}, photo.name


def truncated_image(tmp_path):
    coco, name = coco_copy(tmp_path, edit_images=lambda data: data[: len(data) // 2])
    return {
        "coco": coco
    }, rf"{re.escape(coco['images'])}/{re.escape(name)} is truncated \(JPEG without its end-of-image marker\)"


def repeated_image_id(tmp_path):
    coco, _ = coco_copy(tmp_path, edit_annotations=lambda c: c["images"].append(dict(c["images"][0])))
    return {"coco": coco}, r".*instances\.json lists image id \d+ more than once"


def orphan_annotation(tmp_path):
    coco, _ = coco_copy(
        tmp_path, edit_annotations=lambda c: c["annotations"].append({**c["annotations"][0], "image_id": 999999999})
    )
    return {"coco": coco}, r".*instances\.json has annotations for image id 999999999, which its images list lacks"


def braces_in_path(tmp_path):
    return {"checkpoint": str(tmp_path / "yolo{v10}n.pt")}, r"checkpoint: .*yolo\{v10\}n\.pt contains \{ or \}"


CLI_ROWS = [  # (id, checkpoint maker or a path string, expected error line regex)
    ("missing checkpoint", "missing.pt", r"checkpoint not found: missing\.pt \(set `checkpoint:`"),
    ("not a checkpoint", not_a_checkpoint, r".*yolov10n-seed0\.pt is not a PyTorch checkpoint \("),
    ("code-running pickle", evil_checkpoint, r".*yolov10n-seed0\.pt wants to call posix\.system while unpickling; "),
]
SNAKEMAKE_ROWS = [  # (id, maker(tmp_path, seeded) -> (config overrides, regex), target (None: all), bad checkpoint?)
    (
        "not a checkpoint",
        lambda t, s: ({"checkpoint": str(not_a_checkpoint(t, s))}, r".*is not a PyTorch checkpoint \("),
        FP_METRICS,
        True,
    ),
    (
        "code-running pickle",
        lambda t, s: ({"checkpoint": str(evil_checkpoint(t, s))}, r".*wants to call posix\.system while unpickling"),
        FP_METRICS,
        True,
    ),
    ("braces in a path", lambda t, s: braces_in_path(t), None, True),
    ("truncated image", lambda t, s: truncated_image(t), FP_METRICS, False),
    ("repeated image id", lambda t, s: repeated_image_id(t), FP_METRICS, False),
    ("annotation of an unlisted image", lambda t, s: orphan_annotation(t), FP_METRICS, False),
]


def left_behind(run: Path, checkpoint_was_bad: bool) -> list:
    """What a bad input must not leave: metrics always; models and exports when the checkpoint was bad."""
    if not run.exists():
        return []
    return [p for p in run.rglob("*") if "metrics" in p.parts or (checkpoint_was_bad and p.suffix in (".pt", ".onnx"))]


@pytest.mark.parametrize(("case", "maker", "pattern"), CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_cli_bad_input(case, maker, pattern, tmp_path, seeded_checkpoint):
    checkpoint = maker if isinstance(maker, str) else str(maker(tmp_path, seeded_checkpoint))
    done = subprocess.run(
        [sys.executable, "-m", "yolo_w4", "quantize", "--checkpoint", checkpoint, "--out", "w4.pt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert re.match(f"error: {pattern}", lines[0]), lines[0]
    assert not (tmp_path / "w4.pt").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("case", "maker", "target", "bad_checkpoint"), SNAKEMAKE_ROWS, ids=[row[0] for row in SNAKEMAKE_ROWS]
)
def test_snakemake_bad_input(case, maker, target, bad_checkpoint, tmp_path, seeded_checkpoint):
    overrides, pattern = maker(tmp_path, seeded_checkpoint)
    run = ROOT / "results" / RUN_ID
    shutil.rmtree(run, ignore_errors=True)
    try:
        config = small_config(RUN_ID, **overrides)
        result = snakemake(*([target] if target else []), config=config, tmp_path=tmp_path)
        lines = error_lines(result)
        assert result.returncode != 0 and lines, result.stderr[-3000:]
        assert re.match(f"error: {pattern}", lines[0]), lines[0]
        assert left_behind(run, bad_checkpoint) == [], "nothing made from a bad input remains"
        assert not (tmp_path / "pwned").exists(), "the payload never ran"
    finally:
        shutil.rmtree(run, ignore_errors=True)
