# Path helpers and the values every rule shares. Nothing here runs a job.

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from yolo_w4.calibration import calibration_folder, resolve_calibration_source, spare_photos  # noqa: E402
from yolo_w4.coco_subset import check_report_image  # noqa: E402
from yolo_w4.config import (  # noqa: E402
    needs_calibration,
    needs_synthetic,
    recipe_settings,
    validate_config,
)
from yolo_w4.download import checkpoint_source, coco_source, require_sha256  # noqa: E402
from yolo_w4.errors import UserError  # noqa: E402
from yolo_w4.names import FP  # noqa: E402


def fail(message):
    """Stop before any job runs with one line on stderr (Snakemake would add a traceback)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


try:
    validate_config(config)
except UserError as error:
    fail(error)

RUN = f"results/{config['run_id']}"

CHECKPOINT = config["checkpoint"]
MODEL = Path(CHECKPOINT).stem
VARIANTS = config["build"]  # the recipes this run builds
SEEDED = re.compile(r"results/seeded/(?P<arch>yolo[a-z0-9]+)-seed(?P<seed>\d+)\.pt")

ASSETS = "results/ultralytics-assets"  # the photos shipped with Ultralytics (offline demo)
COCO = config["coco"]

LABELLED = COCO["annotations"] is not None  # null: scored by agreement with FP only (no labels)
for key, value in (
    ("checkpoint", CHECKPOINT),
    ("coco.images", COCO["images"]),
    ("coco.annotations", COCO["annotations"] or ""),
):
    if "{" in value or "}" in value:
        fail(f"{key}: {value} contains {{ or }}, which Snakemake reads as a wildcard; rename or move the file")
# `download: true`: each input that is absent becomes the output of a rule in rules/download.smk
# ({"checkpoint" | "images" | "annotations": (target path, source)}); an input that exists never does.
DOWNLOADS = {}
if config["download"]:
    try:
        if not Path(CHECKPOINT).is_file() and not SEEDED.fullmatch(CHECKPOINT):
            DOWNLOADS["checkpoint"] = (CHECKPOINT, checkpoint_source(config, CHECKPOINT))
        if not Path(COCO["images"]).is_dir() and COCO["images"] != ASSETS:
            DOWNLOADS["images"] = (COCO["images"], coco_source(config, "images"))
        if LABELLED and not Path(COCO["annotations"]).is_file():
            DOWNLOADS["annotations"] = (COCO["annotations"], coco_source(config, "annotations"))
        for target, source in DOWNLOADS.values():
            require_sha256(source, target)
    except UserError as error:
        fail(error)
if not Path(CHECKPOINT).is_file() and not SEEDED.fullmatch(CHECKPOINT) and "checkpoint" not in DOWNLOADS:
    fail(f"checkpoint not found: {CHECKPOINT} (set `checkpoint:` in the config or pass --config checkpoint=PATH)")
if LABELLED and not Path(COCO["annotations"]).is_file() and "annotations" not in DOWNLOADS:
    fail(f"annotations not found: {COCO['annotations']} (set `coco.annotations` in the config)")
if not Path(COCO["images"]).is_dir() and COCO["images"] != ASSETS and "images" not in DOWNLOADS:
    fail(f"COCO images folder not found: {COCO['images']} (set `coco.images` in the config)")
if COCO["image_ids_list"] and not Path(COCO["image_ids_list"]).is_file():
    fail(f"image id list not found: {COCO['image_ids_list']} (config key `coco.image_ids_list`)")
if (
    config["report"]["image_id"] is not None
    and COCO["images"] != ASSETS
    and not DOWNLOADS.keys() & {"images", "annotations"}
):
    try:
        check_report_image(config["report"]["image_id"], COCO)
    except UserError as error:
        fail(error)


def download_path(key):
    """The input rule download_{key} makes, if it is to be fetched; else a path nothing reads, so that
    -F or --delete-all-output can never reach an input that was already there."""
    return DOWNLOADS[key][0] if key in DOWNLOADS else f"results/.download-unused/{key}"


def download_source(key):
    return DOWNLOADS[key][1] if key in DOWNLOADS else None


CALIBRATION = config["calibration"]
# Where calibration photos come from: `calibration.images`, or (null) the evaluation folder's photos
# outside the evaluation subset. A recipe's `calibration_source: auto` becomes images where there are
# such photos and synthetic (distilled) where there are none, decided here, before any job runs.
CALIBRATION_IMAGES, CALIBRATION_ANNOTATIONS = calibration_folder(config)
try:  # a val2017 still to be downloaded has 4,900 photos beside any subset
    SPARE_PHOTOS = ("images" in DOWNLOADS and CALIBRATION["images"] is None) or spare_photos(config)
except UserError as error:
    fail(error)
RECIPES = {  # variant_defaults + catalog entry, `auto` resolved
    name: resolve_calibration_source(recipe_settings(config, name), SPARE_PHOTOS, CALIBRATION_IMAGES)
    for name in VARIANTS
}
CALIBRATED = [v for v in VARIANTS if needs_calibration(RECIPES[v])]
MIXED = [v for v in VARIANTS if RECIPES[v]["mixed"]]
SYNTHETIC = [v for v in VARIANTS if needs_synthetic(RECIPES[v])]
PACKED = [v for v in VARIANTS if RECIPES[v]["weight_bits"] <= 4]  # variants with 4-bit weights to pack
FETCHED = {target for target, _ in DOWNLOADS.values()}  # inputs a download rule makes
if CALIBRATED and CALIBRATION_ANNOTATIONS not in FETCHED | {None} and not Path(CALIBRATION_ANNOTATIONS).is_file():
    fail(
        f"calibration annotations not found: {CALIBRATION_ANNOTATIONS} (needed by {', '.join(CALIBRATED)}; "
        "set `calibration.annotations`, or null to take the folder's photos by file name)"
    )
if CALIBRATED and CALIBRATION_IMAGES not in FETCHED and not Path(CALIBRATION_IMAGES).is_dir():
    fail(f"calibration images folder not found: {CALIBRATION_IMAGES} (set `calibration.images`)")


wildcard_constraints:
    model=re.escape(MODEL),
    variant="|".join(map(re.escape, [FP, *VARIANTS])),


def runtime_path():
    """The probe of the provider and precision the models run with (rule probe_runtime)."""
    return f"{RUN}/runtime/onnxruntime.json"


def runtime_precision(wildcards, input):
    """fp16 or fp32: params function of the rules that export or run a model (reads the probe)."""
    return json.loads(Path(input.runtime).read_text())["precision"]


def quantized_path(variant):
    return f"{RUN}/quantized/{MODEL}-{variant}-ptq.pt"


def onnx_path(variant):
    if variant == FP:  # FP32 or FP16 as the probe decided: the ONNX input type and its JSON say which
        return f"{RUN}/onnx/{MODEL}-fp.onnx"
    return f"{RUN}/onnx/{MODEL}-{variant}-qcdq-ptq.onnx"


def int4_path(variant):
    """The QCDQ model with its 4-bit weights packed as ONNX INT4 (the deployable size)."""
    return f"{RUN}/onnx/{MODEL}-{variant}-int4-ptq.onnx"


def smoke_path(variant):
    return f"{RUN}/smoke/{MODEL}-{variant}.json"


def calibration_record():
    """The calibration photos, written by calibration_subset: folder, ids or file names, the disjointness rule."""
    return f"{RUN}/calibration/images.json"


def synthetic_path():
    return f"{RUN}/calibration/{MODEL}-synthetic.pt"


def sensitivity_path():
    return f"{RUN}/sensitivity/{MODEL}.csv"


def quantize_inputs(wildcards):
    """The checkpoint; real or synthetic calibration images for calibrated variants; the ranking for mixed ones."""
    inputs = {"checkpoint": CHECKPOINT}
    if wildcards.variant in CALIBRATED:
        inputs["calibration"] = calibration_record()
    if wildcards.variant in SYNTHETIC:
        inputs["synthetic"] = synthetic_path()
    if wildcards.variant in MIXED:
        inputs["sensitivity"] = sensitivity_path()
    return inputs


def model_inputs(wildcards):
    """What rebuilds the PyTorch model of a variant: the checkpoint, plus its state dict."""
    inputs = {"checkpoint": CHECKPOINT}
    if wildcards.variant != FP:
        inputs["quantized"] = quantized_path(wildcards.variant)
    return inputs


def export_record(variant):
    return str(Path(onnx_path(variant)).with_suffix(".json"))


def int4_record(variant):
    return str(Path(int4_path(variant)).with_suffix(".json"))


def metrics_path(variant, kind="metrics"):
    """kind: metrics (the JSON of numbers) or detections (COCO results list)."""
    suffix = "" if kind == "metrics" else "-detections"
    return f"{RUN}/metrics/{MODEL}-{variant}{suffix}.json"


def picture_path(variant):
    return f"{RUN}/report/detections/{MODEL}-{variant}.png"


def subset_outputs():
    return {"ids": f"{RUN}/coco/image_ids.txt", "annotations": f"{RUN}/coco/annotations.json"}


REPORT_FILES = {
    "csv": "deltas.csv",
    "markdown": "deltas.md",
    "html": "deltas.html",
    "rst": "summary.rst",
    "json": "deltas.json",
    "map_plot": "map.png",
    "size_plot": "size_vs_map.png",
    "latency_plot": "latency.png",
}


def report_path(key):
    return f"{RUN}/report/{REPORT_FILES[key]}"


# The report's result categories in reading order, each with whether this run fills it. Snakemake's
# menu sorts them by name, hence the numbers; a category is numbered among those this run shows, so
# the menu reads 1..N with no gap whichever recipes are built (tests/test_report_categories.py).
REPORT_CATEGORIES = {
    "Deltas vs FP": True,
    "Plots": True,
    "Detections": True,  # one picture per variant; `build` names at least one
    "Sensitivity": bool(MIXED),  # layer_sensitivity: the ranking mixed precision reads
    "Calibration": bool(SYNTHETIC),  # synthesize_calibration: data-free recipes
}


def report_category(name):
    """'N. name' for report(category=...); an empty category keeps its place (nothing of it is shown)."""
    shown = [category for category, filled in REPORT_CATEGORIES.items() if filled or category == name]
    return f"{shown.index(name) + 1}. {name}"


def all_outputs():
    return [
        *(quantized_path(v) for v in VARIANTS),
        *(onnx_path(v) for v in [FP, *VARIANTS]),
        *(int4_path(v) for v in PACKED),
        *(smoke_path(v) for v in [FP, *VARIANTS]),
        *(metrics_path(v) for v in [FP, *VARIANTS]),
        *(report_path(key) for key in REPORT_FILES),
        *(picture_path(v) for v in VARIANTS),
        *([sensitivity_path()] if MIXED else []),
    ]
