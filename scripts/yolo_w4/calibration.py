"""The calibration photos for calibrated PTQ: never the images the models are scored on.

Where they come from (`calibration.images`): a folder of its own (train2017, say), or, when that
is null, the evaluation folder `coco.images` itself, whose photos outside the evaluation subset
are what a user with val2017 already has (4,900 of them beside a 100-image subset). Either way
the evaluation subset's files are set aside first, so no photo is ever both.

With annotations the candidates are their images in id order (COCO file names are the ids, so
that is name order too); without, the folder's image files in name order. A recipe's
`calibration_source: auto` takes real photos where there are any and distilled images where
there are none (`resolve_calibration_source`), decided before any job runs (`spare_photos`).
"""

import json
from pathlib import Path

from yolo_w4.coco_subset import (
    image_files,
    image_paths,
    is_label_free,
    load_coco,
    read_id_list,
    select_image_ids,
)
from yolo_w4.errors import UserError
from yolo_w4.files import write_json

DISJOINT_RULE = "no calibration photo is an evaluation image (same file, or same COCO id where both are labelled)"


def calibration_folder(config: dict) -> tuple[str, str | None]:
    """(images folder, annotation file or None) the calibration photos come from.

    `calibration.images` null: the evaluation folder and its annotations (`coco.images`, `coco.annotations`).
    """
    options = config["calibration"]
    if options["images"] is None:
        return config["coco"]["images"], config["coco"]["annotations"]
    return options["images"], options["annotations"]


def spare_photos(config: dict) -> bool:
    """Whether the calibration folder has photos outside the evaluation subset (read before any job runs).

    A separate calibration folder always counts as having them (its rule says so if it is empty).
    For the evaluation folder: it holds more image files than the subset can take, or, where the
    subset could take them all, more than the annotations put in it (read only then: small folders).
    """
    folder, annotations = calibration_folder(config)
    coco = config["coco"]
    if config["calibration"]["images"] is not None:
        return True
    if not Path(folder).is_dir():
        return False  # an absent evaluation folder: the download rule or the folder check speaks
    files = len(image_files(folder))
    bound = len(read_id_list(coco["image_ids_list"])) if coco["image_ids_list"] else coco["max_images"]
    if files == 0 or files > bound or annotations is None:
        return files > bound  # an empty folder: the subset rule says so
    if not Path(annotations).is_file():
        return False
    subset = select_image_ids(load_coco(annotations), coco["max_images"], coco["image_ids_list"], annotations)
    return files > len(subset)


def resolve_calibration_source(settings: dict, spare: bool, folder: str) -> dict:
    """A recipe's settings with `calibration_source: auto` made images or synthetic, and why.

    spare: `spare_photos`; folder: where the photos would come from (for the reason).
    """
    if settings["calibration_source"] != "auto":
        return settings
    if spare:
        reason = f"auto: real photos, since {folder} has some outside the evaluation subset"
    else:
        reason = f"auto: distilled images, since {folder} has no photo outside the evaluation subset"
    return {**settings, "calibration_source": "images" if spare else "synthetic", "calibration_source_reason": reason}


def _evaluated(eval_subset, eval_images) -> tuple[set, set]:
    """(resolved files, COCO ids or empty for a label-free subset) of the evaluation subset."""
    if not eval_subset:
        return set(), set()
    evaluated = load_coco(eval_subset)
    files = {path.resolve() for path in image_paths(evaluated, eval_images).values()} if eval_images else set()
    ids = set() if is_label_free(evaluated) else {image["id"] for image in evaluated["images"]}
    return files, ids


def select_calibration(
    images_dir, max_images: int, annotations=None, id_list=None, eval_subset=None, eval_images=None
) -> list[dict]:
    """The calibration photos, [{"id": COCO id or None, "file_name": ...}], none of them an evaluation image.

    annotations: their COCO file (candidates in id order; `id_list` picks ids), or None (the
    folder's files in name order). eval_subset: the evaluation subset's COCO file (rule
    coco_subset), its images under `eval_images`. Evaluation images are set aside before the
    first `max_images` are taken; an id list naming one is refused.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise UserError(f"calibration images folder not found: {folder} (set `calibration.images`)")
    eval_files, eval_ids = _evaluated(eval_subset, eval_images)
    if annotations is None:
        if id_list:
            raise UserError("calibration.image_ids_list needs annotations (ids are COCO image ids)")
        candidates = [{"id": None, "file_name": path.name} for path in image_files(folder)]
    else:
        coco = load_coco(annotations)
        files = {image["id"]: image["file_name"] for image in coco["images"]}
        ids = select_image_ids(coco, len(files), id_list, annotations) if files else []
        candidates = [{"id": i, "file_name": files[i]} for i in ids]
    is_evaluated = [c["id"] in eval_ids or (folder / c["file_name"]).resolve() in eval_files for c in candidates]
    shared = [c for c, evaluated in zip(candidates, is_evaluated) if evaluated]
    if id_list and shared:
        shown = [c["id"] for c in shared[:5]]
        raise UserError(
            f"{id_list}: {len(shared)} calibration ids are also evaluation images (ids {shown}); "
            "list other ids in `calibration.image_ids_list`"
        )
    chosen = [c for c, evaluated in zip(candidates, is_evaluated) if not evaluated][: None if id_list else max_images]
    if not chosen:
        where = f"{folder} ({annotations})" if annotations else str(folder)
        raise UserError(
            f"no calibration photos: {where} has none outside the {len(eval_files) or len(eval_ids)}-image evaluation "
            "subset; set `calibration.images` to another folder, lower coco.max_images, or use a recipe with "
            "calibration_source: synthetic"
        )
    missing = [folder / c["file_name"] for c in chosen if not (folder / c["file_name"]).is_file()]
    if missing:
        raise UserError(f"calibration image not found: {missing[0]} (check `calibration.images`)")
    return chosen


def write_calibration(path, images_dir, chosen: list[dict], annotations=None, eval_subset=None) -> dict:
    """The calibration record (rule calibration_subset): the photos, their folder, the rule they keep."""
    record = {
        "images": str(images_dir),
        "annotations": None if annotations is None else str(annotations),
        "count": len(chosen),
        "ids": [c["id"] for c in chosen] if all(c["id"] is not None for c in chosen) else None,
        "file_names": [c["file_name"] for c in chosen],
        "disjoint_from": None if eval_subset is None else str(eval_subset),
        "rule": DISJOINT_RULE,
    }
    write_json(path, record)
    return record


def read_calibration(path) -> dict:
    """A calibration record written by `write_calibration`, checked for what the readers use."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a calibration record ({error}); re-run rule calibration_subset") from error
    if not isinstance(record, dict) or not isinstance(record.get("file_names"), list):
        raise UserError(f"{path} is not a calibration record (no file_names); re-run rule calibration_subset")
    return record


def calibration_files(path, limit: int | None = None) -> list[Path]:
    """The first `limit` calibration photos of a record, as paths."""
    record = read_calibration(path)
    return [Path(record["images"]) / name for name in record["file_names"][:limit]]


def describe_calibration(path) -> dict:
    """What the quantized record, metrics JSON and report say of the photos a recipe was fitted to."""
    from yolo_w4.provenance import sha256

    record = read_calibration(path)
    return {
        "images": record["images"],
        "count": record["count"],
        "ids": record["ids"],
        "file_names": None if record["ids"] else record["file_names"],
        "record_sha256": sha256(path),
        "disjoint_from": record["disjoint_from"],
        "rule": record["rule"],
    }
