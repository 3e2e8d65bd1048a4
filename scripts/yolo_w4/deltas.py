"""Every variant's numbers next to the FP baseline's: deltas, % retained, size, speed."""

from yolo_w4.evaluate import METRIC_NAMES
from yolo_w4.names import FP, describe_settings


def retained_pct(value, baseline):
    """value as % of baseline; None where the baseline is 0 or missing (nothing to retain)."""
    if value is None or not baseline:
        return None
    return round(100.0 * value / baseline, 2)


def delta_rows(
    metrics: dict, intervals: dict, exports: dict, latency: dict, packed: dict | None = None, agreement=None
) -> list[dict]:
    """One row per model (FP first): metrics, deltas vs FP, bootstrap interval, size, latency.

    metrics: {variant: metrics JSON}; intervals: {variant: paired bootstrap of the mAP50-95
    delta}; exports: {variant: ONNX export record}; latency: interleaved benchmark JSON;
    packed: {variant: INT4 packing record} for variants with 4-bit weights. "size vs FP" is
    the smallest file that runs: the INT4-packed one where it exists.
    """
    packed = packed or {}
    base = metrics[FP]["metrics"]
    base_bytes = exports[FP]["bytes"]
    timing = latency["models"]
    rows = []
    for variant, record in metrics.items():
        values = record["metrics"]
        row = {
            "variant": variant,
            "settings": describe_settings(exports[variant].get("settings")),  # from the export: always current
            "ptq_seconds": record.get("ptq_seconds"),
            "weight_bits": record.get("weight_bits"),
            "weights_4bit_fraction": record.get("weights_4bit_fraction"),
            "bits_per_weight": record.get("bits_per_weight"),
            "images": record["images"],
        }
        for name in METRIC_NAMES:
            row[name] = values[name]
        for name in METRIC_NAMES:
            both = values[name] is not None and base[name] is not None
            row[f"delta_{name}"] = round(values[name] - base[name], 6) if both else None
            row[f"retained_pct_{name}"] = retained_pct(values[name], base[name])
        interval = intervals.get(variant)
        row["delta_mAP50_95_ci_low"] = interval["low"] if interval else None
        row["delta_mAP50_95_ci_high"] = interval["high"] if interval else None
        agrees = (agreement or {}).get(variant) or {}  # label-free: vs the FP model's own detections
        row["agreement_mAP50_95"] = agrees.get("mAP50_95")
        row["agreement_mAP50"] = agrees.get("mAP50")
        row["agreement_ci_low"] = agrees.get("ci_low")
        row["agreement_ci_high"] = agrees.get("ci_high")
        row["onnx_bytes"] = exports[variant]["bytes"]
        row["int4_bytes"] = packed[variant]["bytes"] if variant in packed else None
        row["size_ratio"] = round((row["int4_bytes"] or row["onnx_bytes"]) / base_bytes, 4)
        row["latency_median_ms"] = timing[variant]["median_ms"]
        row["latency_p90_ms"] = timing[variant]["p90_ms"]
        row["latency_ratio"] = timing[variant]["ratio_to_baseline"]
        row["provider"] = record.get("provider_used", timing[variant]["provider_used"])  # the one that made the metrics
        row["precision"] = record["precision"]
        rows.append(row)
    return rows


def _fmt(value, digits=3, suffix=""):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _agreement_interval(r) -> str:
    """' [low, high]' of a variant's agreement; nothing for FP (1.0 by definition) or without a score."""
    if r["variant"] == FP or r["agreement_ci_low"] is None:
        return ""
    return f" [{_fmt(r['agreement_ci_low'])}, {_fmt(r['agreement_ci_high'])}]"


def _delta_interval(r, digits: int) -> str:
    """'[low, high]' of the mAP50-95 delta; n/a where there is no delta, or one image (no spread to resample)."""
    if r["delta_mAP50_95"] is None or r["delta_mAP50_95_ci_low"] is None:
        return "n/a"
    if r["images"] < 2:
        return "n/a: too few images"
    return f"[{_fmt(r['delta_mAP50_95_ci_low'], digits)}, {_fmt(r['delta_mAP50_95_ci_high'], digits)}]"


def _compact_interval(r) -> str:
    return "" if r["delta_mAP50_95"] is None else f" {_delta_interval(r, 3)}"


SUMMARY_COLUMNS = (
    ("model", lambda r: r["variant"]),
    ("settings", lambda r: r["settings"] or ""),
    (
        "weights ≤ 4 bit",
        lambda r: _fmt(r["weights_4bit_fraction"] * 100, 1, "%") if r["weights_4bit_fraction"] is not None else "0%",
    ),
    ("bits/weight", lambda r: _fmt(r["bits_per_weight"], 2)),
    ("mAP50-95", lambda r: _fmt(r["mAP50_95"])),
    ("mAP50", lambda r: _fmt(r["mAP50"])),
    ("Δ mAP50-95", lambda r: _fmt(r["delta_mAP50_95"], 4) if r["variant"] != FP else "—"),
    ("95% CI of Δ", lambda r: _delta_interval(r, 4) if r["variant"] != FP else "—"),
    ("% of FP mAP50-95", lambda r: _fmt(r["retained_pct_mAP50_95"], 1, "%")),
    (
        "agreement mAP50-95 / mAP50 [95% CI]",
        lambda r: f"{_fmt(r['agreement_mAP50_95'])} / {_fmt(r['agreement_mAP50'])}{_agreement_interval(r)}",
    ),
    ("ONNX MB", lambda r: _fmt(r["onnx_bytes"] / 1e6, 2)),
    ("INT4 MB", lambda r: _fmt(r["int4_bytes"] / 1e6, 2) if r["int4_bytes"] else "—"),
    ("size vs FP", lambda r: _fmt(r["size_ratio"], 3, "×")),
    ("latency ms (median)", lambda r: _fmt(r["latency_median_ms"], 2)),
    ("latency vs FP", lambda r: _fmt(r["latency_ratio"], 3, "×")),
    ("provider", lambda r: f"{r['provider'].removesuffix('ExecutionProvider')} {r['precision']}"),
    ("PTQ s", lambda r: _fmt(r["ptq_seconds"], 0) if r["ptq_seconds"] is not None else "—"),
)


# The report's first screen shares its width with the rule graph: six columns only.
COMPACT_COLUMNS = (
    ("model", lambda r: r["variant"]),
    ("mAP50-95", lambda r: _fmt(r["mAP50_95"])),
    (
        "Δ [95% CI]",
        lambda r: "—" if r["variant"] == FP else _fmt(r["delta_mAP50_95"], 3) + _compact_interval(r),
    ),
    ("% of FP", lambda r: _fmt(r["retained_pct_mAP50_95"], 1, "%")),
    ("size", lambda r: _fmt(r["size_ratio"], 2, "×")),
    ("latency", lambda r: _fmt(r["latency_ratio"], 2, "×")),
)


# The same first screen for a run without annotations: agreement with FP is the only score.
COMPACT_LABEL_FREE_COLUMNS = (
    COMPACT_COLUMNS[0],
    ("agreement mAP50-95 [95% CI]", lambda r: _fmt(r["agreement_mAP50_95"]) + _agreement_interval(r)),
    ("agreement mAP50", lambda r: _fmt(r["agreement_mAP50"])),
    *COMPACT_COLUMNS[-2:],
)
LABELLED_ONLY = {"mAP50-95", "mAP50", "Δ mAP50-95", "95% CI of Δ", "% of FP mAP50-95"}  # scores against labels


def summary_table(rows: list[dict], columns=SUMMARY_COLUMNS, labelled=True) -> tuple[list[str], list[list[str]]]:
    """Header and cells; labelled False (no annotations) drops the columns scored against labels."""
    if not labelled:
        columns = COMPACT_LABEL_FREE_COLUMNS if columns is COMPACT_COLUMNS else columns
        columns = [(name, cell) for name, cell in columns if name not in LABELLED_ONLY]
    header = [name for name, _ in columns]
    return header, [[cell(row) for _, cell in columns] for row in rows]
