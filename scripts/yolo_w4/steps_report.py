"""The report env's step: the deltas table, bootstrap intervals, plots and notes.

Runs in `envs/report.yaml` (numpy, pycocotools, matplotlib: no PyTorch, no ONNX Runtime).
"""

from yolo_w4.errors import UserError
from yolo_w4.files import read_json, write_json
from yolo_w4.names import FP
from yolo_w4.provenance import input_record, utc_now, versions


def report_step(
    metrics: dict,
    detections: dict,
    exports: dict,
    latency,
    annotations,
    outputs: dict,
    *,
    resamples: int,
    seed: int,
    agreement_conf: float,
    config=None,
    packed=None,
) -> list[dict]:
    """Deltas vs FP with paired bootstrap intervals -> CSV, Markdown, HTML, RST, JSON, plots.

    packed: {variant: INT4 packing record} for the variants with 4-bit weights. agreement_conf:
    the FP detections kept as pseudo ground truth for the label-free agreement score.
    """
    from yolo_w4 import plots, report
    from yolo_w4.bootstrap import paired_bootstrap
    from yolo_w4.coco_subset import is_label_free, labels_kind, load_coco
    from yolo_w4.deltas import delta_rows
    from yolo_w4.evaluate import coco_eval, coco_ground_truth, pseudo_ground_truth, summarize, with_area

    sources = {  # every record the table is built from, by sha256: a published table can be traced
        **{f"metrics/{name}": path for name, path in metrics.items()},
        **{f"detections/{name}": path for name, path in detections.items()},
        **{f"export/{name}": path for name, path in exports.items()},
        **{f"int4/{name}": path for name, path in (packed or {}).items()},
        "latency": latency,
        "annotations": annotations,
    }
    metrics = {name: read_json(path) for name, path in metrics.items()}
    exports = {name: read_json(path) for name, path in exports.items()}
    packed = {name: read_json(path) for name, path in (packed or {}).items()}
    latency = read_json(latency)
    ids = metrics[FP]["image_ids_sha256"]
    for name, record in metrics.items():
        if record["image_ids_sha256"] != ids:
            raise UserError(
                f"{name} was scored on other images than fp (image_ids sha256 differs); re-run the workflow"
            )
    subset = load_coco(annotations)
    labelled = not is_label_free(subset)
    if not labelled:  # no annotations: the classes are the model's (evaluate_step records them)
        subset = {**subset, "categories": metrics[FP]["categories"]}
    gt = coco_ground_truth(subset)
    image_ids = sorted(gt.getImgIds())
    found = {name: read_json(path) for name, path in detections.items()}
    intervals = {}
    if labelled:
        evaluators = {name: coco_eval(gt, found[name], image_ids) for name in found}
        intervals = {
            name: paired_bootstrap(evaluators[FP], evaluators[name], resamples, seed) for name in metrics if name != FP
        }
    pseudo = coco_ground_truth(pseudo_ground_truth(subset, found[FP], agreement_conf))
    agreeing = {name: coco_eval(pseudo, with_area(found[name]), image_ids) for name in found}
    agreement = {}
    for name, evaluator in agreeing.items():
        values = summarize(evaluator)
        low = high = None  # no score: the FP model kept no detection above agreement_conf
        if values["mAP50_95"] is not None:
            # FP against itself is 1.0 in every resample: no bootstrap needed. Resampled images bias AP
            # against a pseudo ground truth upwards: the percentile interval, shifted by the bootstrap's
            # own bias estimate (mean - estimate), is centred on the estimate (and kept within [0, 1]).
            low = high = 1.0
            if name != FP:
                paired = paired_bootstrap(agreeing[FP], evaluator, resamples, seed)
                bias = paired["bootstrap_mean"] - paired["delta"]
                low, high = (round(min(max(1 + paired[end] - bias, 0.0), 1.0), 6) for end in ("low", "high"))
        agreement[name] = {"mAP50_95": values["mAP50_95"], "mAP50": values["mAP50"], "ci_low": low, "ci_high": high}
    rows = delta_rows(metrics, intervals, exports, latency, packed, agreement)
    notes = report_notes(metrics, latency, resamples, labelled)
    notes.append(
        f"Agreement: each model's detections scored against the FP model's own detections with score >= "
        f"{agreement_conf} as ground truth (no labels; FP = 1.0), 95% CI by the same bootstrap."
    )
    notes.append(f"Built from {len(sources)} records; deltas.json lists each by path and sha256 (`inputs`).")
    title = f"yolo-w4 deltas vs FP — run {config.get('run_id') if config else ''}"
    report.write_csv(outputs["csv"], rows)
    report.write_text(outputs["markdown"], report.markdown(rows, notes, labelled))
    report.write_text(outputs["html"], report.html_page(rows, notes, title, labelled))
    report.write_text(outputs["rst"], report.rst_fragment(rows, notes, labelled))
    write_json(
        outputs["json"],
        {
            "rows": rows, "labels": labels_kind(subset),
            "bootstrap": intervals, "agreement": agreement, "agreement_conf": agreement_conf,
            "notes": notes, "image_ids_sha256": ids,
            "inputs": input_record(sources), "config": config, "versions": versions(), "created": utc_now(),
        },
    )  # fmt: skip
    plots.plot_map(rows, outputs["map_plot"], labelled)
    plots.plot_size_vs_map(rows, outputs["size_plot"], labelled)
    plots.plot_latency(rows, outputs["latency_plot"])
    print(report.markdown(rows, notes, labelled))
    return rows


def report_notes(metrics: dict, latency: dict, resamples: int, labelled: bool = True) -> list[str]:
    from yolo_w4 import report

    base = metrics[FP]
    notes = []
    if not labelled:
        notes.append(
            "No annotations (coco.annotations: null): there is no mAP against labels. Every score is label-free "
            "agreement with the FP model, which says how faithfully each variant reproduces FP, not how accurate FP is."
        )
    if any(record.get("trusted_load") for record in metrics.values()):
        notes.append(
            "The checkpoint was loaded with trust_checkpoint: true (unrestricted unpickling, which can run code "
            "the file holds); only do this for a file you trust."
        )
    if any(record.get("random_weights") for record in metrics.values()):
        notes.append(f"{report.WARNING}: these metrics show the workflow's mechanics, not accuracy.")
    notes.append(
        f"{'COCO subset' if labelled else 'Image folder subset'} of {base['images']} images "
        f"(image_ids sha256 {base['image_ids_sha256'][:12]}…), "
        f"head {base['head']}, conf {base['conf']}" + (f", NMS IoU {base['iou']}" if base["iou"] else "") + "."
    )
    if labelled:
        notes.append(f"Δ = variant − FP; 95% CI: paired bootstrap over images, {resamples} resamples.")
    notes.append(
        "Size vs FP: the INT4 file (4-bit weights packed two per byte, opset 21) where a variant has one, "
        "else its ONNX file; QCDQ keeps 4-bit weights in int8."
    )
    narrow = sorted(name for name, r in metrics.items() if r.get("weight_bits") and r["weight_bits"] < 4)
    if narrow:
        notes.append(
            f"{', '.join(narrow)}: fewer than 4 bits per integer, stored as INT4 all the same (ONNX has no narrower "
            "type): their bits/weight says how many integers the grid has, their files are a 4-bit model's size."
        )
    notes.append(
        f"Latency: {latency['method']}; {len(latency['images'])} images x {latency['rounds']} rounds, "
        f"batch 1, model only (no pre/post-processing)."
    )
    scored = {(r.get("provider_used"), r.get("precision")) for r in metrics.values()}
    timed = {m.get("provider_used") for m in latency["models"].values()}
    if len(scored) == 1 and timed == {p for p, _ in scored}:
        provider, precision = next(iter(scored))
        notes.append(
            f"Every model was scored and timed with ONNX Runtime {str(provider).removesuffix('ExecutionProvider')}, {precision}."
        )
    if len(scored) > 1 or len(timed | {p for p, _ in scored}) > 1:
        used = ", ".join(
            f"{name}: {r.get('provider_used', '?').removesuffix('ExecutionProvider')} {r.get('precision')}"
            for name, r in metrics.items()
        )
        notes.append(
            f"Not comparable like for like: models were scored or timed on different providers or precisions ({used})."
        )
    notes += calibration_notes(metrics)
    reasons = {
        r.get("cuda_reason") for r in metrics.values() if r.get("cuda_reason") and r.get("cuda_reason") != "device: cpu"
    }
    if reasons:
        notes.append(f"CUDA was asked for (device: auto) but not used: {'; '.join(sorted(reasons))}.")
    return notes


def calibration_notes(metrics: dict) -> list[str]:
    """One note per calibration a run used: which variants, fitted to what, never an evaluation image."""
    grouped = {}
    for variant, record in metrics.items():
        calibration = record.get("calibration")
        if not calibration:
            continue
        photos = calibration.get("photos")
        if calibration["source"] == "synthetic":
            what = f"{calibration['count']} images distilled from the checkpoint's BatchNorm statistics (no real photo)"
        else:
            what = f"{calibration['count']} real photos of {photos['images']}, none of them an evaluation image"
            if photos.get("ids"):
                what += f" (COCO ids {photos['ids'][0]}…{photos['ids'][-1]})"
        if calibration.get("reason"):
            what += f"; calibration_source {calibration['reason']}"
        grouped.setdefault(what, []).append(variant)
    return [f"Calibration of {', '.join(variants)}: {what}." for what, variants in grouped.items()]
