"""Score an ONNX detector on the COCO subset with pycocotools, in ONNX Runtime.

Preprocessing is Ultralytics' (640 letterbox, gray 114, RGB, /255); boxes are mapped back
to each original image. Class index i is the i-th category of the annotation file in id
order (COCO: 80 categories with ids 1..90).
"""

import contextlib
import io

from yolo_w4.errors import UserError

METRIC_NAMES = (
    "mAP50_95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def category_ids(coco: dict, classes: int) -> list[int]:
    """Category id of each class index; the model and the annotations must agree on the count."""
    ids = sorted(category["id"] for category in coco["categories"])
    if len(ids) != classes:
        raise UserError(
            f"the model predicts {classes} classes but the annotations have {len(ids)} categories; "
            "evaluate with annotations for the classes the model was trained on"
        )
    return ids


def to_coco_results(image_ids, detections, cat_ids) -> list[dict]:
    """COCO results format: xywh boxes in original pixels, category ids, scores."""
    results = []
    for image_id, found in zip(image_ids, detections):
        for box, score, cls in zip(found.boxes, found.scores, found.classes):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[int(cls)]),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(score), 5),
                }
            )
    return results


def coco_ground_truth(coco: dict):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco
        gt.createIndex()
    return gt


def coco_eval(gt, results: list[dict], image_ids):
    """A COCOeval with evaluate() done (per image), restricted to `image_ids`."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        # pycocotools cannot load an empty result list
        detections = gt.loadRes(results) if results else coco_ground_truth({**gt.dataset, "annotations": []})
        evaluator = COCOeval(gt, detections, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
    return evaluator


def summarize(evaluator) -> dict:
    """The 12 standard COCO numbers by name; None where the subset has no such objects (COCO's -1)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return {name: round(float(v), 6) if v >= 0 else None for name, v in zip(METRIC_NAMES, evaluator.stats)}


def with_area(detections: list[dict]) -> list[dict]:
    """Detections whose box has an area: a box clipped flat at an image edge can match nothing."""
    return [d for d in detections if d["bbox"][2] > 0 and d["bbox"][3] > 0]


def pseudo_ground_truth(coco: dict, reference: list[dict], conf: float, per_class: int = 100) -> dict:
    """`coco` with its annotations replaced by the reference model's own detections scoring >= conf.

    Label-free agreement: another model's detections scored against these say how closely it
    reproduces the reference (the FP model), with no human labels; 1.0 for the reference itself.
    At most `per_class` per image and class are kept, the highest scoring: COCOeval scores the
    top 100 detections of each image and class, so the reference's own cover all of them. Boxes
    without area are left out (score agreement on `with_area` detections, on both sides).
    """
    groups = {}
    for d in with_area(reference):
        if d["score"] >= conf:
            groups.setdefault((d["image_id"], d["category_id"]), []).append(d)
    kept = [d for group in groups.values() for d in sorted(group, key=lambda d: -d["score"])[:per_class]]
    annotations = [
        {
            "id": index,
            "image_id": d["image_id"],
            "category_id": d["category_id"],
            "bbox": d["bbox"],
            "area": d["bbox"][2] * d["bbox"][3],
            "iscrowd": 0,
        }
        for index, d in enumerate(kept, 1)
    ]
    return {"images": coco["images"], "categories": coco["categories"], "annotations": annotations}


def score(coco: dict, results: list[dict], image_ids) -> dict:
    return summarize(coco_eval(coco_ground_truth(coco), results, image_ids))
