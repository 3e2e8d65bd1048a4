"""Turn raw ONNX outputs into detections: no NMS for one2one, class-aware NMS for one2many.

Pure NumPy, so evaluation needs only ONNX Runtime. Mirrors Ultralytics' postprocessing:
`one2one` (1, max_det, 6) rows are already final; `one2many` (1, 4 + classes, anchors) is
xywh plus class scores, filtered by `conf`, best class per anchor, then NMS per class.
"""

from dataclasses import dataclass

import numpy as np

from yolo_w4.preprocess import Letterbox

MAX_WH = 7680  # class offset for batched NMS, as in Ultralytics


@dataclass
class Detections:
    """Boxes in original-image pixels (xyxy), scores and class indices, sorted by score."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def as_records(self, names: dict | None = None) -> list[dict]:
        return [
            {
                "class_id": int(cls),
                **({"name": names.get(int(cls), str(int(cls)))} if names else {}),
                "score": round(float(score), 5),
                "box_xyxy": [round(float(v), 2) for v in box],
            }
            for box, score, cls in zip(self.boxes, self.scores, self.classes)
        ]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    xy, half = boxes[:, :2], boxes[:, 2:4] / 2
    return np.concatenate([xy - half, xy + half], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Greedy NMS; indices of kept boxes in descending score order, at most `limit`."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clip(0).prod(axis=1)
        overlap = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode_one2one(output: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.asarray(output, dtype=np.float32)[0]
    rows = rows[rows[:, 4] > conf]
    return rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64)


def decode_one2many(output: np.ndarray, conf: float, iou: float, max_det: int, multi_label=False, max_nms=30000):
    """multi_label: every class above `conf` is a candidate (Ultralytics' validator); else the best one (predictor)."""
    preds = np.asarray(output, dtype=np.float32)[0].T  # (anchors, 4 + classes)
    class_scores = preds[:, 4:]
    if multi_label:
        anchors, classes = np.nonzero(class_scores > conf)
        scores = class_scores[anchors, classes]
    else:
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(preds)), classes]
        anchors = np.nonzero(scores > conf)[0]
        scores, classes = scores[anchors], classes[anchors]
    boxes = xywh_to_xyxy(preds[anchors, :4])
    if len(scores) > max_nms:
        top = np.argsort(-scores, kind="stable")[:max_nms]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    keep = nms(boxes + classes[:, None] * MAX_WH, scores, iou, max_det)
    return boxes[keep], scores[keep], classes[keep]


def decode(
    output: np.ndarray,
    head: str,
    mapping: Letterbox,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    multi_label: bool = False,
) -> Detections:
    """Detections in original-image pixels from one image's raw model output."""
    if head == "one2one":
        boxes, scores, classes = decode_one2one(output, conf)
    else:
        boxes, scores, classes = decode_one2many(output, conf, iou, max_det, multi_label)
    order = np.argsort(-scores, kind="stable")[:max_det]
    return Detections(mapping.to_original(boxes[order]), scores[order], classes[order])
