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


def empty_checkpoint(tmp_path, _):
    path = tmp_path / "yolov10n-seed0.pt"
    path.touch()
    return path


def folder_checkpoint(tmp_path, _):
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


CLI_ROWS = [  # (id, checkpoint maker or a path string, expected error line regex)
    ("missing checkpoint", "missing.pt", r"checkpoint not found: missing\.pt \(set `checkpoint:`"),
    ("empty checkpoint", empty_checkpoint, r".*yolov10n-seed0\.pt is empty \(0 bytes\), not a PyTorch checkpoint; "),
    ("folder as checkpoint", folder_checkpoint, r"checkpoint .*weights is a directory; point `checkpoint:` at"),
    ("not a checkpoint", not_a_checkpoint, r".*yolov10n-seed0\.pt is not a PyTorch checkpoint \("),
    ("code-running pickle", evil_checkpoint, r".*yolov10n-seed0\.pt wants to call posix\.system while unpickling; "),
]


def checkpoint_copy(tmp_path, seeded) -> str:
    shutil.copy(seeded, tmp_path / "model.pt")
    return "model.pt"


def linked(tmp_path, name: str, target) -> str:
    (tmp_path / name).symlink_to(target)
    return name


def made(tmp_path, name: str, make) -> str:
    make(tmp_path / name)
    return name


def config_file(tmp_path, text: str) -> str:
    (tmp_path / "mine.yaml").write_text(text)
    return "mine.yaml"


def quantize(out: str, *extra: str):
    """argv maker: quantize a copy of the seeded checkpoint (model.pt) to `out`, with `extra` flags."""
    return lambda t, s: [
        "quantize",
        "--checkpoint",
        checkpoint_copy(t, s),
        "--variant",
        "w4a16_rtn",
        *extra,
        "--out",
        out,
    ]


ARGV_ROWS = [  # (id, maker(tmp_path, seeded) -> argv after `python -m yolo_w4`, expected error line regex)
    ("quantize --out is its checkpoint", quantize("model.pt"), r"output model\.pt is also an input of this step"),
    (
        "quantize --out links to its checkpoint",
        lambda t, s: quantize(linked(t, "link.pt", t / "model.pt"))(t, s),
        r"output link\.pt is also an input of this step \(model\.pt\)",
    ),
    (
        "export --out is its checkpoint",
        lambda t, s: ["export", "--checkpoint", checkpoint_copy(t, s), "--out", "model.pt"],
        r"output model\.pt is also an input",
    ),
    (
        "pack --out is its --onnx",
        lambda t, s: ["pack", "--onnx", made(t, "p.onnx", lambda p: p.write_bytes(b"qcdq")), "--out", "p.onnx"],
        r"output p\.onnx is also an input",
    ),
    (
        "pack's JSON would replace its --onnx",
        lambda t, s: ["pack", "--onnx", made(t, "p.json", lambda p: p.write_text("{}")), "--out", "p.onnx"],
        r"output p\.json is also an input",
    ),
    ("--out is a device", quantize("/dev/null"), r"output /dev/null is a character device, not a file; "),
    ("--out is a FIFO", lambda t, s: quantize(made(t, "fifo", os.mkfifo))(t, s), r"output fifo is a FIFO, not a file"),
    ("--out is a directory", lambda t, s: quantize(made(t, "out", Path.mkdir))(t, s), r"output out is a directory"),
    (
        "--out links to a device",
        lambda t, s: quantize(linked(t, "null.pt", "/dev/null"))(t, s),
        r"output null\.pt is a character device \(a symlink to /dev/null\), not a file",
    ),
    (
        "--imgsz 33",
        quantize("w4.pt", "--imgsz", "33"),
        r"--imgsz 33 is refused: invalid config at imgsz: 33 is not a multiple of 32",
    ),
    ("--imgsz 0", quantize("w4.pt", "--imgsz", "0"), r"--imgsz 0 is refused: .* 0 is less than the minimum of 32"),
    ("--imgsz -32", quantize("w4.pt", "--imgsz", "-32"), r"--imgsz -32 is refused: .* -32 is less than the minimum"),
    (
        "synthesize --steps 0",
        lambda t, s: ["synthesize", "--checkpoint", checkpoint_copy(t, s), "--steps", "0", "--out", "syn.pt"],
        r"--steps 0 is refused: invalid config at calibration\.synthetic\.steps: 0 is less than the minimum of 1",
    ),
    (
        "smoke --runs 0",
        lambda t, s: [
            "smoke",
            "--checkpoint",
            checkpoint_copy(t, s),
            "--onnx",
            "m.onnx",
            "--runs",
            "0",
            "--out",
            "s.json",
        ],
        r"--runs 0 is refused: invalid config at smoke\.runs: 0 is less than the minimum of 1",
    ),
    (
        "--config is not YAML",
        lambda t, s: quantize("w4.pt", "--config", config_file(t, "imgsz: [320\n"))(t, s),
        r"config file mine\.yaml is not valid YAML \(line 2, column 1\): .*; fix it",
    ),
    (
        "--config is binary",
        lambda t, s: quantize("w4.pt", "--config", made(t, "mine.yaml", lambda p: p.write_bytes(b"\xff\xfe\x00")))(
            t, s
        ),
        r"config file mine\.yaml is not valid YAML: ",
    ),
    (
        "--config is a list",
        lambda t, s: quantize("w4.pt", "--config", config_file(t, "- imgsz\n"))(t, s),
        r"config file mine\.yaml holds a list, not a mapping of config keys",
    ),
    (
        "imgsz: 320.0",
        lambda t, s: quantize("w4.pt", "--config", config_file(t, "imgsz: 320.0\n"))(t, s),
        r"invalid config at imgsz: 320\.0 is not of type 'integer'",
    ),
    (
        "max_images: 3.0",
        lambda t, s: quantize("w4.pt", "--config", config_file(t, "coco: {max_images: 3.0}\n"))(t, s),
        r"invalid config at coco\.max_images: 3\.0 is not of type 'integer'",
    ),
]


def snapshot(folder: Path) -> dict:
    """{relative path: bytes, or the kind of a non-regular entry}: the inputs a refused command must leave intact."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else p.lstat().st_mode
        for p in folder.rglob("*")
    }


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


def cli_error(argv: list, cwd, pattern: str) -> None:
    """`python -m yolo_w4 ARGV` ends with exit 2 and one error line matching `pattern`, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "yolo_w4", *argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert re.match(f"error: {pattern}", lines[0]), lines[0]


@pytest.mark.parametrize(("case", "maker", "pattern"), CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_cli_bad_input(case, maker, pattern, tmp_path, seeded_checkpoint):
    checkpoint = maker if isinstance(maker, str) else str(maker(tmp_path, seeded_checkpoint))
    cli_error(["quantize", "--checkpoint", checkpoint, "--out", "w4.pt"], tmp_path, pattern)
    assert not (tmp_path / "w4.pt").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("case", "maker", "pattern"), ARGV_ROWS, ids=[row[0] for row in ARGV_ROWS])
def test_cli_bad_arguments(case, maker, pattern, tmp_path, seeded_checkpoint):
    """Outputs that would replace an input or a special file, flags and configs the schema refuses."""
    argv = maker(tmp_path, seeded_checkpoint)
    before = snapshot(tmp_path)
    cli_error(argv, tmp_path, pattern)
    assert snapshot(tmp_path) == before, "inputs intact, nothing written"


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


def annotation_edit(field, value):
    """An edit of the first annotation: `field` set to `value`, or removed when value is ..."""

    def edit(coco):
        annotation = coco["annotations"][0]
        if value is ...:
            del annotation[field]
        else:
            annotation[field] = value

    return edit


COCO_ROWS = [  # (id, edit of the one-image COCO file, expected error regex): refused by the subset rule's load_coco
    (
        "unknown category_id",
        annotation_edit("category_id", 999),
        r".*: annotation id \d+ has category_id 999, which is not among",
    ),
    (
        "negative box width",
        annotation_edit("bbox", [1, 2, -3, 4]),
        r".*: annotation id \d+ has bbox \[1, 2, -3, 4\] with a negative",
    ),
    ("bbox not a list", annotation_edit("bbox", "1 2 3 4"), r".*: annotation id \d+ has bbox '1 2 3 4', not a list"),
    ("no iscrowd", annotation_edit("iscrowd", ...), r".*: annotation id \d+ has no iscrowd field"),
    ("no area", annotation_edit("area", ...), r".*: annotation id \d+ has no area field"),
    ("NaN area", annotation_edit("area", float("nan")), r".*: annotation id \d+ has area nan, not a number >= 0"),
    ("string image id", lambda c: c["images"][0].update(id="139"), r".*: image '139' has an id that is not an integer"),
    ("zero image width", lambda c: c["images"][0].update(width=0), r".*: image id \d+ has width 0, not a positive"),
]


@pytest.mark.parametrize(("case", "edit", "pattern"), COCO_ROWS, ids=[row[0] for row in COCO_ROWS])
def test_impossible_annotation_values_stop_the_subset(case, edit, pattern, tmp_path):
    from yolo_w4.coco_subset import write_subset
    from yolo_w4.errors import UserError

    coco, _ = coco_copy(tmp_path, edit_annotations=edit)
    with pytest.raises(UserError) as raised:
        write_subset(coco["annotations"], coco["images"], tmp_path / "ids.txt", tmp_path / "subset.json", 1)
    assert re.fullmatch(pattern + r".*; fix or remove that entry", str(raised.value)), raised.value
    assert not (tmp_path / "ids.txt").exists() and not (tmp_path / "subset.json").exists()


@pytest.mark.parametrize(
    ("case", "content", "pattern"),
    [
        ("superscript digit", "139\n²\n".encode(), r".*ids\.txt:2: '²' is not an image id"),
        ("binary bytes", b"139\n\xff\xd8\xff\xe0", r".*ids\.txt is not a text file \(byte 4 is not UTF-8\)"),
    ],
    ids=["superscript digit", "binary bytes"],
)
def test_id_list_that_is_not_integers_is_one_line(case, content, pattern, tmp_path):
    from yolo_w4.coco_subset import write_subset
    from yolo_w4.errors import UserError

    coco, _ = coco_copy(tmp_path)
    (tmp_path / "ids.txt").write_bytes(content)
    with pytest.raises(UserError, match=f"^{pattern}"):
        write_subset(
            coco["annotations"], coco["images"], tmp_path / "out.txt", tmp_path / "subset.json", 1, tmp_path / "ids.txt"
        )
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "subset.json").exists()


def test_exif_rotated_photo_is_decoded_in_cocos_pixel_order(tmp_path):
    """COCO's boxes are in stored pixel order: an EXIF Orientation tag must not turn the photo under them."""
    import cv2
    from PIL import Image

    from yolo_w4.coco_subset import annotated_sizes, load_coco
    from yolo_w4.preprocess import read_image

    coco, name = coco_copy(tmp_path)
    photo = Path(coco["images"]) / name
    with Image.open(photo) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
        image.save(photo, exif=exif, quality=95)
    stored_hw = next(iter(annotated_sizes(load_coco(coco["annotations"])).values()))
    assert cv2.imread(str(photo)).shape[:2] == stored_hw[::-1], "OpenCV's default decode turns it"
    assert read_image(photo, stored_hw).shape[:2] == stored_hw


@pytest.mark.parametrize(
    ("case", "pixels_hw", "pattern"),
    [
        ("1x1 photo for a 640-pixel one", (1, 1), r".*\.jpg is 1x1 pixels but its annotation .* says \d+x\d+; "),
        ("51-megapixel photo", (7200, 7200), r".*\.jpg is 7200x7200 pixels, over the 50-megapixel bound"),
    ],
    ids=["1x1 photo", "51-megapixel photo"],
)
def test_photo_of_another_size_than_its_annotation_stops(case, pixels_hw, pattern, tmp_path):
    import cv2
    import numpy as np

    from yolo_w4.coco_subset import annotated_sizes, load_coco
    from yolo_w4.errors import UserError
    from yolo_w4.preprocess import load_input

    coco, name = coco_copy(tmp_path)
    photo = Path(coco["images"]) / name
    cv2.imwrite(str(photo), np.zeros((*pixels_hw, 3), np.uint8))
    stored_hw = next(iter(annotated_sizes(load_coco(coco["annotations"])).values()))
    with pytest.raises(UserError, match=f"^{pattern}"):
        load_input(photo, 320, expected_hw=stored_hw)


@pytest.fixture(scope="module")
def fp_onnx(seeded_checkpoint, tmp_path_factory) -> Path:
    """The seeded checkpoint's FP ONNX at imgsz 64 (small: these tests only check what it claims to be)."""
    from yolo_w4.steps_torch import export_step

    path = tmp_path_factory.mktemp("fp-onnx") / "fp.onnx"
    export_step(seeded_checkpoint, path, path.with_suffix(".json"), precision="fp32", head="one2one", imgsz=64)
    return path


def restamped(key: str, value: str):
    """A maker of a copy of the FP ONNX whose metadata `key` says `value`."""

    def make(onnx_path: Path, folder: Path) -> Path:
        import onnx

        from yolo_w4.onnx_graph import set_metadata

        model = onnx.load(onnx_path)
        set_metadata(model, {key: value})
        onnx.save(model, folder / "other.onnx")
        return folder / "other.onnx"

    return make


def tampered(onnx_path: Path, folder: Path) -> Path:
    """A copy of the FP ONNX, metadata intact, whose largest weight has its sign flipped: no longer its checkpoint."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    largest = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    largest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(largest), largest.name))
    onnx.save(model, folder / "tampered.onnx")
    return folder / "tampered.onnx"


SMOKE_ROWS = [  # (id, ONNX maker(fp onnx, folder), extra flags, expected error line regex)
    (
        "ONNX whose weights changed after export",
        tampered,
        [],
        r".*tampered\.onnx is not a faithful export of this checkpoint and variant: only 0 of its \d+ output rows match",
    ),
    (
        "FP ONNX said to be w4a16_rtn",
        lambda onnx_path, folder: onnx_path,
        ["--variant", "w4a16_rtn"],
        r".*fp\.onnx is not the model it is said to be: its yolo_w4_variant is 'fp', not 'w4a16_rtn'; ",
    ),
    (
        "ONNX of another checkpoint",
        restamped("yolo_w4_checkpoint_sha256", "0" * 64),
        [],
        r".*other\.onnx is not the model it is said to be: its yolo_w4_checkpoint_sha256 is '0{64}', not '[0-9a-f]{64}'",
    ),
    (
        "ONNX exported at another imgsz",
        lambda onnx_path, folder: onnx_path,
        ["--imgsz", "96"],
        r".*fp\.onnx takes 64x64 inputs, not 96x96; pass --imgsz 64 or export it again at imgsz 96",
    ),
]


@pytest.mark.parametrize(("case", "maker", "flags", "pattern"), SMOKE_ROWS, ids=[row[0] for row in SMOKE_ROWS])
def test_smoke_refuses_an_onnx_that_is_not_what_it_is_said_to_be(
    case, maker, flags, pattern, fp_onnx, seeded_checkpoint, tmp_path
):
    onnx_path = maker(fp_onnx, tmp_path)
    argv = ["smoke", "--checkpoint", str(seeded_checkpoint), "--onnx", str(onnx_path), "--imgsz", "64"]
    cli_error([*argv, "--device", "cpu", *flags, "--out", "smoke.json"], tmp_path, pattern)
    assert not (tmp_path / "smoke.json").exists()


def test_evaluation_stops_on_a_photo_of_another_size_than_its_annotation(fp_onnx, tmp_path):
    """The evaluate step's reader checks each photo against images[].width/height before scoring it."""
    import cv2
    import numpy as np

    from yolo_w4.coco_subset import annotated_sizes, load_coco
    from yolo_w4.errors import UserError
    from yolo_w4.runtime import create_session, predict_images

    coco, name = coco_copy(tmp_path)
    photo = Path(coco["images"]) / name
    cv2.imwrite(str(photo), np.zeros((1, 1, 3), np.uint8))
    sizes = list(annotated_sizes(load_coco(coco["annotations"])).values())
    session, _ = create_session(fp_onnx, "cpu")
    with pytest.raises(UserError, match=rf"{re.escape(name)} is 1x1 pixels but its annotation"):
        predict_images(session, [photo], "one2one", 64, 0.25, 0.7, 300, sizes=sizes)


def test_snakemake_in_another_directory_without_its_config_says_so(tmp_path):
    """`snakemake -s REPO/Snakefile -d RUN --configfile mine.yaml`: RUN has no config/config.yaml to lay it over."""
    (tmp_path / "mine.yaml").write_text("run_id: elsewhere\n")
    run_there = ["-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile", "mine.yaml"]
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *run_there, "-n", "--cores", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"error: config/config.yaml was not found in the working directory {tmp_path}, so ")
    assert lines[0].endswith(
        f"copy {ROOT / 'config' / 'config.yaml'} there (then edit it), or run from the checkout {ROOT}"
    )
