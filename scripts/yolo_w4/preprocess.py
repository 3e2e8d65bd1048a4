"""Ultralytics' inference preprocessing and box mapping, in plain NumPy/OpenCV.

Matches `LetterBox(auto=False)` (640 square, gray 114, centred padding, INTER_LINEAR) and
`ops.scale_boxes`, so the ONNX models see exactly what Ultralytics' predictor feeds them.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yolo_w4.errors import UserError

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed in the square input: undo it with `to_original`."""

    orig_hw: tuple
    gain_xy: tuple
    pad_xy: tuple

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from input pixels back to the original image, clipped to it."""
        boxes = np.array(boxes_xyxy, dtype=np.float32, copy=True).reshape(-1, 4)
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_xy[0]) / self.gain_xy[0]
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_xy[1]) / self.gain_xy[1]
        height, width = self.orig_hw
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return boxes


def read_image(path) -> np.ndarray:
    """BGR uint8 image, or one clear error if the file is missing or not an image."""
    if not Path(path).is_file():
        raise UserError(f"image not found: {path} (check `coco.images` / the image list in the config)")
    data = Path(path).read_bytes()
    truncated = _truncated(data)
    if truncated:
        raise UserError(
            f"{path} is truncated ({truncated}); re-download or remove it, a partly decoded image would be scored"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path} is not a readable image (OpenCV could not decode it)")
    return image


def _truncated(data: bytes) -> str | None:
    """Why a JPEG or PNG file is cut short, or None. libjpeg only warns and decodes the part it has."""
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-65536:]:
        return "JPEG without its end-of-image marker"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        return "PNG without its IEND chunk"
    return None


def letterbox(image_bgr: np.ndarray, imgsz: int = 640) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio, pad to imgsz x imgsz; return the padded BGR image and the mapping."""
    height, width = image_bgr.shape[:2]
    ratio = min(imgsz / height, imgsz / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    dw, dh = (imgsz - new_w) / 2, (imgsz - new_h) / 2
    if (width, height) != (new_w, new_h):
        image_bgr = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(image_bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    mapping = Letterbox(orig_hw=(height, width), gain_xy=(new_w / width, new_h / height), pad_xy=(left, top))
    return padded, mapping


def to_input(padded_bgr: np.ndarray, dtype=np.float32) -> np.ndarray:
    """BGR HWC uint8 -> RGB NCHW in [0, 1], the network's input tensor."""
    rgb = padded_bgr[:, :, ::-1].transpose(2, 0, 1)
    return (np.ascontiguousarray(rgb[None], dtype=np.float32) / 255.0).astype(dtype)


def load_input(path, imgsz: int = 640, dtype=np.float32) -> tuple[np.ndarray, Letterbox]:
    """Read an image file and return (input tensor, letterbox mapping)."""
    padded, mapping = letterbox(read_image(path), imgsz)
    return to_input(padded, dtype), mapping
