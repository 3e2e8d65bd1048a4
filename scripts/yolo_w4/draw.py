"""One COCO image with the FP model's boxes and a quantized model's boxes, side by side."""

import cv2
import numpy as np

from yolo_w4.files import atomic_path
from yolo_w4.preprocess import read_image


def _draw(image: np.ndarray, results: list[dict], names: dict, color, title: str) -> np.ndarray:
    canvas = image.copy()
    for det in results:
        x, y, w, h = (round(v) for v in det["bbox"])
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, 2)
        label = f"{names.get(det['category_id'], det['category_id'])} {det['score']:.2f}"
        cv2.putText(canvas, label, (x, max(y - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 28), (255, 255, 255), -1)
    cv2.putText(canvas, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def draw_side_by_side(
    image_path, image_id: int, fp: list[dict], quantized: list[dict], variant: str, names: dict, out, conf=0.25
) -> int:
    """Write the PNG; return how many boxes were drawn in all."""
    image = read_image(image_path)
    left = [d for d in fp if d["image_id"] == image_id and d["score"] >= conf]
    right = [d for d in quantized if d["image_id"] == image_id and d["score"] >= conf]
    panels = [
        _draw(image, left, names, (40, 40, 220), f"FP: {len(left)} boxes (score >= {conf})"),
        _draw(image, right, names, (40, 160, 40), f"{variant}: {len(right)} boxes (score >= {conf})"),
    ]
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), np.hstack([panels[0], gap, panels[1]])):
            raise OSError(f"could not write {out}")
    return len(left) + len(right)
