"""The report's figures: mAP with bootstrap intervals, size vs mAP, latency."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from yolo_w4.files import atomic_path
from yolo_w4.names import FP


def _save(figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def _score(row: dict, labelled: bool):
    """The number a plot shows for a model: mAP50-95 against labels, else agreement with FP."""
    return row["mAP50_95"] if labelled else row["agreement_mAP50_95"]


def plot_map(rows: list[dict], path, labelled: bool = True) -> None:
    """Left: mAP50-95 per model. Right: Δ vs FP with the paired-bootstrap 95% interval.

    labelled False (no annotations): agreement mAP50-95 with FP, and its loss (agreement − 1).
    """
    names = [r["variant"] for r in rows]
    score = "mAP50-95" if labelled else "agreement mAP50-95 with FP"
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.bar(names, [_score(r, labelled) or 0 for r in rows], color=["#777"] + ["#3a7"] * (len(rows) - 1))
    left.set_ylabel(score)
    left.set_title("COCO subset mAP50-95" if labelled else "Agreement with FP (no labels)")
    variants = [r for r in rows if r["variant"] != FP]
    if labelled:
        bounds = [(r["delta_mAP50_95"], r["delta_mAP50_95_ci_low"], r["delta_mAP50_95_ci_high"]) for r in variants]
    else:
        bounds = [
            tuple(
                None if v is None else v - 1
                for v in (r["agreement_mAP50_95"], r["agreement_ci_low"], r["agreement_ci_high"])
            )
            for r in variants
        ]
    deltas = [d or 0 for d, _, _ in bounds]
    errors = [
        [d - (low if low is not None else d) for d, (_, low, _) in zip(deltas, bounds)],
        [(high if high is not None else d) - d for d, (_, _, high) in zip(deltas, bounds)],
    ]
    right.bar([r["variant"] for r in variants], deltas, yerr=errors, capsize=6, color="#37a")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("Δ mAP50-95 vs FP" if labelled else "agreement − 1")
    right.set_title("Delta with paired bootstrap 95% CI")
    _save(figure, path)


def plot_size_vs_map(rows: list[dict], path, labelled: bool = True) -> None:
    """Left: mAP50-95 (label-free: agreement) against stored bits per conv weight (scales included). Right: against file size."""
    figure, (bits_axis, size_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        value = _score(row, labelled) or 0
        size = (row["int4_bytes"] or row["onnx_bytes"]) / 1e6
        for axis, x in ((bits_axis, row.get("bits_per_weight")), (size_axis, size)):
            if x is None:
                continue
            axis.scatter(x, value, s=50)
            axis.annotate(row["variant"], (x, value), textcoords="offset points", xytext=(6, 4), fontsize=8)
    bits_axis.set_xscale("log", base=2)
    bits_axis.set_xlabel("bits per conv weight (log2; 4-bit integers + FP16 scales per channel or group)")
    bits_axis.set_ylabel("mAP50-95" if labelled else "agreement mAP50-95 with FP")
    bits_axis.set_title("Bits per weight vs accuracy")
    size_axis.set_xlabel("ONNX file size (MB; INT4-packed where 4-bit)")
    size_axis.set_title("Size vs accuracy")
    _save(figure, path)


def plot_latency(rows: list[dict], path) -> None:
    names = [r["variant"] for r in rows]
    medians = [r["latency_median_ms"] for r in rows]
    spread = [[0] * len(rows), [r["latency_p90_ms"] - r["latency_median_ms"] for r in rows]]
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.bar(names, medians, yerr=spread, capsize=6, color="#a73")
    provider = rows[0]["provider"].removesuffix("ExecutionProvider")
    axis.set_ylabel("ms per image (median, whisker p90)")
    axis.set_title(f"ONNX Runtime latency ({provider}, interleaved)")
    _save(figure, path)


def plot_sensitivity(rows: list[dict], path, top: int = 30) -> None:
    """Output SQNR per layer with only that layer at 4 bits: the `top` most sensitive."""
    shown = rows[:top]
    figure, axis = plt.subplots(figsize=(7, 0.22 * len(shown) + 1.2))
    axis.barh([r["layer"] for r in shown][::-1], [r["output_sqnr_db"] for r in shown][::-1], color="#a33")
    axis.set_xlabel("output SQNR (dB), this layer alone at 4 bits — lower is more sensitive")
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title(f"Layer sensitivity (top {len(shown)} of {len(rows)})")
    _save(figure, path)
