"""The calibration images for calibrated PTQ: never the images the models are scored on."""

from yolo_w4.coco_subset import image_paths, load_coco, read_id_list, read_ids
from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path


def select_calibration(annotations, images_dir, max_images: int, id_list=None, eval_ids_file=None) -> list[int]:
    """Calibration image ids (sorted), refused if any is also an evaluation image.

    COCO image ids are unique across its splits, so a shared id means a shared image.
    """
    coco = load_coco(annotations)
    known = sorted(image["id"] for image in coco["images"])
    if id_list:
        ids = sorted(read_id_list(id_list))
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise UserError(f"{id_list}: {len(unknown)} calibration image ids are not in {annotations} ({unknown[:5]})")
    else:
        ids = known[:max_images]
    if not ids:
        raise UserError(f"no calibration images: {annotations} has none (config key `calibration`)")
    overlap = sorted(set(ids) & set(read_ids(eval_ids_file))) if eval_ids_file else []
    if overlap:
        raise UserError(
            f"{len(overlap)} calibration images are also evaluation images (ids {overlap[:5]}); "
            "calibrate on another split (e.g. train2017) or list other ids in `calibration.image_ids_list`"
        )
    files = image_paths(coco, images_dir)
    missing = [files[i] for i in ids if not files[i].is_file()]
    if missing:
        raise UserError(f"calibration image not found: {missing[0]} (check `calibration.images`)")
    return ids


def write_calibration_ids(path, ids) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))


def calibration_tensors(annotations, images_dir, ids_file, imgsz: int = 640, limit: int | None = None) -> list:
    """The calibration images, letterboxed like evaluation images, as (1, 3, imgsz, imgsz) tensors."""
    import torch

    from yolo_w4.preprocess import load_input

    files = image_paths(load_coco(annotations), images_dir)
    return [torch.from_numpy(load_input(files[i], imgsz)[0]) for i in read_ids(ids_file)[:limit]]
