"""The calibration images for calibrated PTQ: never the images the models are scored on."""

from yolo_w4.coco_subset import image_paths, is_label_free, load_coco, select_image_ids
from yolo_w4.errors import UserError


def select_calibration(
    annotations, images_dir, max_images: int, id_list=None, eval_subset=None, eval_images=None
) -> list[int]:
    """Calibration image ids (sorted), refused if any is also an evaluation image.

    eval_subset: the evaluation subset's COCO file (rule coco_subset). COCO image ids are unique
    across its splits, so a shared id means a shared image; a label-free subset numbers its files
    1..N, so there the same file (resolved path under `eval_images`) is what counts.
    """
    coco = load_coco(annotations)
    if not coco["images"]:
        raise UserError(f"no calibration images: {annotations} has none (config key `calibration`)")
    ids = select_image_ids(coco, max_images, id_list, annotations)
    files = image_paths(coco, images_dir)
    overlap = []
    if eval_subset:
        evaluated = load_coco(eval_subset)
        if is_label_free(evaluated):
            shared = {path.resolve() for path in image_paths(evaluated, eval_images).values()}
            overlap = [i for i in ids if files[i].resolve() in shared]
        else:
            overlap = sorted(set(ids) & {image["id"] for image in evaluated["images"]})
    if overlap:
        raise UserError(
            f"{len(overlap)} calibration images are also evaluation images (ids {overlap[:5]}); "
            "calibrate on another split (e.g. train2017) or list other ids in `calibration.image_ids_list`"
        )
    missing = [files[i] for i in ids if not files[i].is_file()]
    if missing:
        raise UserError(f"calibration image not found: {missing[0]} (check `calibration.images`)")
    return ids
