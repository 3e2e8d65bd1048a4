"""The fixed COCO subset every variant is scored on: ids, their annotations, their images.

Ids come from `coco.max_images` (first N ids in sorted order) or `coco.image_ids_list`
(one id a line, `#` comments). The subset is written once and its sha256 goes into every
metrics JSON, so two numbers are only ever compared on the same images.

Without annotations (`coco.annotations: null`) the subset is the first `max_images` image
files of the folder in name order, numbered 1..N, in a COCO file with no annotations and
`"label_free": true`: the models are then compared by their agreement with the FP model only.
"""

import collections
import functools
import json
from pathlib import Path

from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path, write_json

COCO_KEYS = ("images", "annotations", "categories")


def load_coco(path) -> dict:
    """A COCO detection annotation file, checked for the keys evaluation needs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotations not found: {path} (set `coco.annotations` in the config)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not JSON ({type(error).__name__}: {error}); point `coco.annotations` at instances_*.json"
        ) from error
    missing = [key for key in COCO_KEYS if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise UserError(f"{path} is not a COCO detection annotation file (no {', '.join(missing)} list)")
    check_images(path, data)
    ids = [image["id"] for image in data["images"]]
    repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if repeated:
        raise UserError(
            f"{path} lists image id {repeated[0]} more than once ({len(repeated)} ids repeated); each image must appear once"
        )
    annotated = {a.get("image_id") for a in data["annotations"] if isinstance(a, dict)}
    orphans = sorted(annotated - set(ids), key=str)
    if orphans:
        raise UserError(
            f"{path} has annotations for image id {orphans[0]}, which its images list lacks ({len(orphans)} such ids)"
        )
    check_annotations(path, data)
    return data


def _refuse(path, entry: str, problem: str) -> UserError:
    """Values pycocotools would score wrongly, or crash on in evaluate_coco after every export has run:
    one line naming the entry and its field."""
    return UserError(f"{path}: {entry} has {problem}; fix or remove that entry")


def check_images(path, coco: dict) -> None:
    """Image ids are integers, stated sizes positive integers."""
    refuse = functools.partial(_refuse, path)
    for image in coco["images"]:
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            shown = image.get("id") if isinstance(image, dict) else image
            raise refuse(f"image {shown!r}", "an id that is not an integer (COCO image ids are integers)")
        for field in ("width", "height"):
            if field in image and not (_is_int(image[field]) and image[field] > 0):
                raise refuse(f"image id {image['id']}", f"{field} {image[field]!r}, not a positive integer")


def check_annotations(path, coco: dict) -> None:
    """Every annotation has the fields COCOeval reads, each a value it can score."""
    refuse = functools.partial(_refuse, path)
    categories = {category.get("id") for category in coco["categories"] if isinstance(category, dict)}
    for number, annotation in enumerate(coco["annotations"]):
        if not isinstance(annotation, dict):
            raise refuse(f"annotation #{number}", f"type {type(annotation).__name__}, not an object")
        entry = f"annotation id {annotation.get('id', f'#{number}')!r}"
        missing = [field for field in ANNOTATION_FIELDS if field not in annotation]
        if missing:
            raise refuse(entry, f"no {', '.join(missing)} field (COCO detection annotations need {ANNOTATION_FIELDS})")
        image_id, category_id, box = annotation["image_id"], annotation["category_id"], annotation["bbox"]
        if not _is_int(image_id):
            raise refuse(entry, f"image_id {image_id!r}, not an integer")
        if not _is_int(category_id) or category_id not in categories:
            raise refuse(entry, f"category_id {category_id!r}, which is not among its categories")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise refuse(entry, f"bbox {box!r}, not a list [x, y, width, height] of 4 numbers")
        if box[2] < 0 or box[3] < 0:
            raise refuse(entry, f"bbox {box!r} with a negative width or height")
        if not _is_int(annotation["iscrowd"]) or annotation["iscrowd"] not in (0, 1):
            raise refuse(entry, f"iscrowd {annotation['iscrowd']!r}, not 0 or 1")
        if not (_is_number(annotation["area"]) and annotation["area"] >= 0):
            raise refuse(entry, f"area {annotation['area']!r}, not a number >= 0")


ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN


def read_id_list(path) -> list[int]:
    """Image ids from a text file: one per line, blank lines and `#` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image id list not found: {path} (config key `coco.image_ids_list`)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not a text file (byte {error.start} is not UTF-8); it should hold one image id a line"
        ) from None
    ids = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit()):  # str.isdigit() also admits '²', which int() refuses
            raise UserError(f"{path}:{number}: {text!r} is not an image id (one integer per line, # for comments)")
        ids.append(int(text))
    if not ids:
        raise UserError(f"{path} lists no image ids (one integer per line, # for comments)")
    if len(set(ids)) != len(ids):
        raise UserError(f"{path} lists some image ids more than once")
    return ids


def select_image_ids(coco: dict, max_images: int, id_list=None, annotations_path="annotations") -> list[int]:
    """The subset's ids, in sorted order."""
    known = sorted(image["id"] for image in coco["images"])
    if id_list:
        wanted = read_id_list(id_list)
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            shown = ", ".join(map(str, unknown[:5])) + (" …" if len(unknown) > 5 else "")
            raise UserError(f"{id_list}: {len(unknown)} image ids are not in {annotations_path} ({shown})")
        return sorted(wanted)
    if not known:
        raise UserError(f"{annotations_path} has no images")
    return known[:max_images]


def check_report_image(image_id: int, coco_config: dict) -> None:
    """`report.image_id` must be an image of the evaluation subset: checked before any job runs, not after
    every costly one (draw_detections draws it). A label-free subset numbers its files 1..max_images."""
    annotations, id_list = coco_config["annotations"], coco_config["image_ids_list"]
    if annotations is None:
        count = min(coco_config["max_images"], len(image_files(coco_config["images"])))
        ids, where = range(1, count + 1), f"the label-free subset numbers its {count} photos 1..{count}"
    else:
        ids = select_image_ids(load_coco(annotations), coco_config["max_images"], id_list, annotations)
        where = f"the subset's ids are {ids[0]}…{ids[-1]} ({len(ids)}; coco/image_ids.txt)" if ids else "no ids"
    if image_id not in ids:
        raise UserError(
            f"report.image_id {image_id} is not an image of the evaluation subset ({where}); "
            "pick one of them, or null for the image with the most objects"
        )


def subset(coco: dict, image_ids: list[int]) -> dict:
    """The annotation file restricted to `image_ids` (all categories kept)."""
    keep = set(image_ids)
    return {
        "info": coco.get("info", {}),
        "licenses": coco.get("licenses", []),
        "images": sorted((i for i in coco["images"] if i["id"] in keep), key=lambda i: i["id"]),
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        "categories": coco["categories"],
    }


def image_paths(coco: dict, images_dir) -> dict:
    """{image id: path of its file under images_dir}."""
    return {image["id"]: Path(images_dir) / image["file_name"] for image in coco["images"]}


def annotated_sizes(coco: dict) -> dict:
    """{image id: (height, width)} for the images whose entry states both."""
    return {i["id"]: (i["height"], i["width"]) for i in coco["images"] if "height" in i and "width" in i}


def check_images_exist(coco_subset: dict, images_dir) -> None:
    for image_id, path in image_paths(coco_subset, images_dir).items():
        if not path.is_file():
            raise UserError(f"image not found: {path} (image id {image_id}; check `coco.images`)")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_files(folder) -> list[Path]:
    """The image files of a folder, in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_subset(images_dir, max_images: int, image_size) -> dict:
    """A label-free COCO file for the first `max_images` images of a folder, in file name order.

    image_size(path) -> (height, width) decodes each image (the caller's env has the decoder), so an
    unreadable file stops the run before any model is scored.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise UserError(f"COCO images folder not found: {folder} (set `coco.images` in the config)")
    files = image_files(folder)
    if not files:
        raise UserError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); set `coco.images`")
    images = []
    for image_id, path in enumerate(files[:max_images], 1):
        height, width = image_size(path)
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
    return {
        "info": {"description": f"label-free subset: first {len(images)} images of {folder} by file name"},
        "label_free": True,
        "images": images,
        "annotations": [],
        "categories": [],
    }


def is_label_free(coco: dict) -> bool:
    """True for a subset written without annotations: only agreement with the FP model can be scored."""
    return bool(coco.get("label_free"))


def labels_kind(coco: dict) -> str:
    """What a subset's models are scored against, as the metrics and deltas JSONs state it."""
    return "none (label-free: agreement with FP only)" if is_label_free(coco) else "COCO annotations"


def write_subset(
    annotations, images_dir, ids_out, annotations_out, max_images=100, id_list=None, image_size=None
) -> dict:
    """Select, check and write the subset; return a short description.

    annotations None: the label-free subset of the folder (`folder_subset`, sizes from `image_size`);
    an id list needs annotations.
    """
    if annotations is None:
        if id_list:
            raise UserError(
                "coco.image_ids_list needs coco.annotations (ids are COCO image ids); without annotations "
                "the first coco.max_images files of coco.images in name order are used"
            )
        part = folder_subset(images_dir, max_images, image_size)
        ids = [image["id"] for image in part["images"]]
    else:
        coco = load_coco(annotations)
        ids = select_image_ids(coco, max_images, id_list, annotations)
        part = subset(coco, ids)
        check_images_exist(part, images_dir)
    write_ids(ids_out, ids)
    write_json(annotations_out, part)
    return {"images": len(ids), "annotations": len(part["annotations"]), "categories": len(part["categories"])}


def write_ids(path, ids) -> None:
    """One image id a line (atomically): the subset and calibration id files."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))


def read_ids(path) -> list[int]:
    return [int(line) for line in Path(path).read_text().split()]
