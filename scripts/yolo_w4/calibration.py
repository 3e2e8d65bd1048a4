"""The calibration images for calibrated PTQ: never the images the models are scored on."""

from yolo_w4.coco_subset import image_paths, load_coco, read_ids, select_image_ids
from yolo_w4.errors import UserError


def select_calibration(annotations, images_dir, max_images: int, id_list=None, eval_ids_file=None) -> list[int]:
    """Calibration image ids (sorted), refused if any is also an evaluation image.

    COCO image ids are unique across its splits, so a shared id means a shared image.
    """
    coco = load_coco(annotations)
    if not coco["images"]:
        raise UserError(f"no calibration images: {annotations} has none (config key `calibration`)")
    ids = select_image_ids(coco, max_images, id_list, annotations)
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
