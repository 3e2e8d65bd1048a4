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
MAX_PIXELS = 50_000_000  # a 50-megapixel photo; larger is a mistake or a decompression bomb, not a COCO image


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


def read_image(path, expected_hw: tuple | None = None) -> np.ndarray:
    """BGR uint8 image in its stored pixel order, or one clear error if the file is missing or not an image.

    EXIF orientation is ignored, as COCO's tools do: annotation boxes are in stored pixel order, and
    a rotated decode would score boxes against a turned photo. expected_hw: the annotation's
    (height, width); a photo of another size cannot match its boxes, so it is refused.
    """
    if not Path(path).is_file():
        raise UserError(f"image not found: {path} (check `coco.images` / the image list in the config)")
    data = Path(path).read_bytes()
    truncated = _truncated(data)
    if truncated:
        raise UserError(
            f"{path} is truncated ({truncated}); re-download or remove it, a partly decoded image would be scored"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise UserError(f"{path} is not a readable image (OpenCV could not decode it)")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise UserError(
            f"{path} is {image.shape[1]}x{image.shape[0]} pixels, over the {MAX_PIXELS // 1_000_000}-megapixel bound "
            "(at the network's input size it would be a blur); downscale it and its boxes, or remove it"
        )
    if expected_hw and tuple(expected_hw) != image.shape[:2]:
        (height, width), (want_h, want_w) = image.shape[:2], expected_hw
        raise UserError(
            f"{path} is {width}x{height} pixels but its annotation (images[].width/height) says {want_w}x{want_h}; "
            "its boxes would not fit: restore the original photo or fix the annotation"
        )
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


def load_input(path, imgsz: int = 640, dtype=np.float32, expected_hw=None) -> tuple[np.ndarray, Letterbox]:
    """Read an image file and return (input tensor, letterbox mapping); expected_hw as `read_image`."""
    padded, mapping = letterbox(read_image(path, expected_hw), imgsz)
    return to_input(padded, dtype), mapping
