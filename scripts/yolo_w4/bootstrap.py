"""Paired bootstrap over images of a mAP50-95 difference.

COCOeval's evaluate() matches detections per image; only accumulate() pools images. So
each model is evaluated once, and each resample (image ids drawn with replacement, the
same draw for both models) re-runs accumulate on the matching per-image records.
"""

import contextlib
import io

import numpy as np


def map50_95(evaluator) -> float:
    """mAP50-95 (area all, 100 detections) from accumulated precision, as COCOeval.summarize."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def resampled_map(evaluator, positions: np.ndarray) -> float:
    """mAP50-95 of `evaluator` over the images at `positions` (with repeats)."""
    params = evaluator._paramsEval  # what accumulate() reads
    image_ids = list(params.imgIds)
    per_image = evaluator._yolo_w4_per_image if hasattr(evaluator, "_yolo_w4_per_image") else None
    if per_image is None:
        count = len(image_ids)
        blocks = len(evaluator.evalImgs) // count  # categories x area ranges
        per_image = [evaluator.evalImgs[b * count : (b + 1) * count] for b in range(blocks)]
        evaluator._yolo_w4_per_image = per_image
    original_ids, original_imgs = params.imgIds, evaluator.evalImgs
    try:
        params.imgIds = [image_ids[p] for p in positions]
        evaluator.params.imgIds = params.imgIds
        evaluator.evalImgs = [block[p] for block in per_image for p in positions]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate()
        return map50_95(evaluator)
    finally:
        params.imgIds = evaluator.params.imgIds = original_ids
        evaluator.evalImgs = original_imgs


def paired_bootstrap(baseline, variant, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Interval of mAP50-95(variant) - mAP50-95(baseline) over images resampled in pairs."""
    count = len(baseline._paramsEval.imgIds)
    if list(baseline._paramsEval.imgIds) != list(variant._paramsEval.imgIds):
        raise ValueError("paired bootstrap needs both models evaluated on the same image ids")
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    for r in range(resamples):
        positions = rng.integers(0, count, size=count)
        deltas[r] = resampled_map(variant, positions) - resampled_map(baseline, positions)
    low, high = np.quantile(deltas, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {
        "metric": "mAP50_95",
        "level": level,
        "low": round(float(low), 6),
        "high": round(float(high), 6),
        "resamples": resamples,
        "seed": seed,
        "images": count,
    }
