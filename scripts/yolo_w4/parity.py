"""How closely an ONNX model reproduces the PyTorch model it was exported from."""

import numpy as np

# A one2one row further than this from every same-class reference row is a different
# detection (top-k membership flipped at the 300-row boundary), not a numerical error.
MATCH_TOLERANCE_PX = 1.0


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(|ref|^2 / |ref - test|^2); inf if identical."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((reference - np.asarray(test, dtype=np.float64)) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10 * np.log10(np.sum(reference**2) / noise))


def match_rows(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """For each test row, the nearest reference row of the same class (L2 over all columns).

    The one2one head ends in a top-k: rows whose scores differ by less than float noise
    can swap places, so its (300, 6) output is compared as a set, not row by row. A test
    row whose class the reference lacks gets a row of NaN.
    """
    test = np.asarray(test, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    distances = ((test[:, None, :] - reference[None, :, :]) ** 2).sum(-1)
    distances[test[:, None, 5] != reference[None, :, 5]] = np.inf
    best = distances.argmin(axis=1)
    matched = reference[best].copy()
    matched[~np.isfinite(distances.min(axis=1))] = np.nan
    return matched


def compare_outputs(reference: np.ndarray, test: np.ndarray, head: str) -> dict:
    """SQNR and max |diff| of ONNX vs PyTorch output; order-free for the one2one head."""
    reference = np.asarray(reference, dtype=np.float32)
    test = np.asarray(test, dtype=np.float32)
    if reference.shape != test.shape:
        raise ValueError(f"output shapes differ: PyTorch {reference.shape}, ONNX {test.shape}")
    result = {}
    if head == "one2one":
        matched = match_rows(reference[0], test[0])
        same = np.abs(matched[:, :4] - test[0, :, :4]).max(axis=1) <= MATCH_TOLERANCE_PX  # NaN -> False
        reference, test = matched[same], test[0, same]
        result = {"rows_matched": int(same.sum()), "rows": int(same.size)}
        method = (
            "set comparison: each ONNX row vs the nearest same-class PyTorch row; rows more than "
            f"{MATCH_TOLERANCE_PX} px from any are top-k membership flips, counted, not scored"
        )
    else:
        method = "element-wise"
    sqnr = sqnr_db(reference, test)
    return {
        "sqnr_db": round(sqnr, 2) if np.isfinite(sqnr) else None,
        "max_abs_diff": float(np.abs(reference - test).max()) if test.size else None,
        **result,
        "method": method,
    }
