"""The steps of `envs/onnxruntime.yaml`: INT4 packing, COCO subset, runtime probe, scoring, latency, pictures.

Like `steps_torch.py`, each reads inputs, calls the library, writes outputs; these need only
ONNX Runtime, pycocotools and OpenCV (no PyTorch). tests/test_envs.py checks every import
they reach, at any depth, against that env.
"""

from pathlib import Path

from yolo_w4.files import read_json, write_json
from yolo_w4.names import describe_settings
from yolo_w4.provenance import input_record, sha256, utc_now, versions


def subset_step(annotations, images, ids_out, annotations_out, *, max_images: int, image_ids_list=None) -> dict:
    """The fixed image subset every model is scored on."""
    from yolo_w4.coco_subset import write_subset
    from yolo_w4.preprocess import read_image

    described = write_subset(
        annotations, images, ids_out, annotations_out, max_images, image_ids_list, lambda p: read_image(p).shape[:2]
    )
    print(f"subset: {described}")
    return described


def calibration_step(
    images, output, *, max_images: int, annotations=None, eval_subset=None, eval_images=None, image_ids_list=None
) -> dict:
    """The calibration photos: first `max_images` of the folder (or the list) outside the evaluation subset."""
    from yolo_w4.calibration import select_calibration, write_calibration

    chosen = select_calibration(images, max_images, annotations, image_ids_list, eval_subset, eval_images)
    record = write_calibration(output, images, chosen, annotations, eval_subset)
    order = "listed ids" if image_ids_list else "by id" if annotations else "by file name"
    print(f"calibration: {len(chosen)} photos of {images} ({order}), none among the evaluation images")
    return record


def probe_step(output, *, device: str, precision: str, config=None) -> dict:
    """Which provider and precision the models will run with, decided in the env that runs them.

    The Snakefile cannot decide this at parse time: under --use-conda, Snakemake's own Python
    may not even have ONNX Runtime. A tiny session created CUDA-first says what really runs.
    """
    from yolo_w4.runtime import probe_providers, resolve_precision

    probe = probe_providers(device)
    record = {
        **probe,
        "precision": resolve_precision(precision, device, probe),
        "precision_requested": precision,
        "config": config,
        "versions": versions(),
        "created": utc_now(),
    }
    write_json(output, record)
    reason = f" ({probe['cuda_reason']})" if probe.get("cuda_reason") else ""
    print(f"ONNX Runtime runs on {probe['provider_used']}{reason}; precision {record['precision']}")
    return record


def evaluate_step(
    onnx_path,
    annotations,
    ids_file,
    images,
    metrics_out,
    detections_out,
    variant: str,
    *,
    head: str,
    imgsz: int,
    device: str,
    precision: str,
    conf: float,
    iou: float,
    max_det: int,
    multi_label: bool,
    export_record=None,
    config=None,
) -> dict:
    """ONNX model (+ its export record) -> COCO detections JSON + metrics JSON on the subset.

    A label-free subset (no annotations) gets detections and empty metrics; its category ids
    are the model's class indices, named in the record's `categories` for the report.
    """
    from yolo_w4.coco_subset import annotated_sizes, image_paths, is_label_free, labels_kind, load_coco, read_ids
    from yolo_w4.evaluate import METRIC_NAMES, category_ids, score, to_coco_results
    from yolo_w4.runtime import create_session, latency_stats, predict_images

    coco = load_coco(annotations)
    labelled = not is_label_free(coco)
    ids = read_ids(ids_file)
    files = image_paths(coco, images)
    exported = read_json(export_record)
    session, providers = create_session(onnx_path, device)
    model = exported["checkpoint"]
    cat_ids = category_ids(coco, model["classes"]) if labelled else list(range(model["classes"]))
    images_in_order = [files[i] for i in ids]
    sizes = annotated_sizes(coco)
    detections, latencies = predict_images(
        session, images_in_order, head, imgsz, conf, iou, max_det, multi_label, sizes=[sizes.get(i) for i in ids]
    )
    results = to_coco_results(ids, detections, cat_ids)
    metrics = score(coco, results, ids) if labelled else dict.fromkeys(METRIC_NAMES)
    record = {
        "variant": variant,
        "metrics": metrics,
        "labels": labels_kind(coco),
        "categories": None  # the annotation file's; label-free: the model's classes
        if labelled
        else [{"id": i, "name": name} for i, name in zip(cat_ids, model.get("names") or map(str, cat_ids))],
        "images": len(ids),
        "detections": len(results),
        "image_ids_sha256": sha256(ids_file),
        "head": head,
        "conf": conf,
        "iou": iou if head == "one2many" else None,
        "max_det": max_det,
        "nms": ("class-aware, multi-label" if multi_label else "class-aware, best class")
        if head == "one2many"
        else "none (one-to-one head)",
        **providers,
        "precision": precision,
        "latency_ms": {
            **latency_stats(latencies),
            "per_image": [round(t, 3) for t in latencies],
            "excludes": "preprocessing and decoding",
        },
        "weights_4bit_fraction": exported.get("weights_4bit_fraction"),
        "weight_bits": (exported.get("settings") or {}).get("weight_bits"),
        "bits_per_weight": exported.get("bits_per_weight"),
        "settings": describe_settings(exported.get("settings")),
        "ptq_seconds": (exported.get("settings") or {}).get("ptq_seconds"),
        "calibration": calibration_summary(exported.get("settings")),
        "random_weights": (exported.get("checkpoint") or {}).get("random_weights"),
        "trusted_load": (exported.get("checkpoint") or {}).get("trusted_load"),
        "inputs": input_record({"onnx": onnx_path, "annotations": annotations, "image_ids": ids_file}),
        "config": config,
        "versions": versions(),
        "created": utc_now(),
    }
    write_json(detections_out, results)
    write_json(metrics_out, record)
    if labelled:
        print(f"{variant}: mAP50-95 {metrics['mAP50_95']}, mAP50 {metrics['mAP50']} on {len(ids)} images")
    else:
        print(f"{variant}: {len(results)} detections on {len(ids)} images (no annotations: scored by agreement)")
    return record


def calibration_summary(settings: dict | None) -> dict | None:
    """What a quantized model was fitted to (metrics JSON, report notes); None for an FP or uncalibrated model."""
    if not settings or not settings.get("calibration_image_count"):
        return None
    return {
        "source": settings["calibration_source"],
        "reason": settings.get("calibration_source_reason"),
        "count": settings["calibration_image_count"],
        "photos": settings.get("calibration_photos"),  # real photos: folder, ids, record sha256, the rule
        "synthetic_images_sha256": settings.get("synthetic_images_sha256"),
    }


def latency_step(
    models: dict,
    ids_file,
    annotations,
    images,
    output,
    *,
    device: str,
    count: int,
    rounds: int,
    imgsz: int,
    config=None,
) -> dict:
    """Interleaved latency of every ONNX model on the first `count` subset images."""
    from yolo_w4.coco_subset import image_paths, load_coco, read_ids
    from yolo_w4.latency import interleaved_latency

    files = image_paths(load_coco(annotations), images)
    chosen = [files[i] for i in read_ids(ids_file)[:count]]
    result = interleaved_latency(models, chosen, device, rounds, imgsz=imgsz)
    result.update({"inputs": input_record(models), "config": config, "versions": versions(), "created": utc_now()})
    write_json(output, result)
    for name, timing in result["models"].items():
        print(
            f"{name}: median {timing['median_ms']} ms ({timing['ratio_to_baseline']}x FP) on {timing['provider_used']}"
        )
    return result


def draw_step(
    image_dir, annotations, fp_detections, detections, variant, output, *, conf: float, image_id=None, fp_metrics=None
) -> int:
    """Side-by-side picture of FP vs `variant` boxes on one subset image.

    image_id None: the image with the most annotated objects (label-free: the most FP boxes drawn).
    fp_metrics: the FP metrics JSON, whose `categories` name a label-free run's classes.
    """
    from yolo_w4.coco_subset import load_coco
    from yolo_w4.draw import draw_side_by_side

    coco = load_coco(annotations)
    fp = read_json(fp_detections)
    if image_id is None:
        counted = coco["annotations"] or [d for d in fp if d["score"] >= conf]
        counts = {}
        for found in counted:
            counts[found["image_id"]] = counts.get(found["image_id"], 0) + 1
        image_id = max(sorted(counts), key=counts.get) if counts else coco["images"][0]["id"]
    image = next(i for i in coco["images"] if i["id"] == image_id)
    categories = coco["categories"] or (read_json(fp_metrics).get("categories") if fp_metrics else None) or []
    names = {c["id"]: c["name"] for c in categories}
    return draw_side_by_side(
        Path(image_dir) / image["file_name"], image_id, fp, read_json(detections), variant, names, output, conf
    )


def pack_step(qcdq, output, record_path, config=None) -> dict:
    """QCDQ ONNX -> INT4-packed ONNX, proven to give ONNX Runtime the same outputs (+ a JSON)."""
    import numpy as np

    from yolo_w4.pack_int4 import pack_int4
    from yolo_w4.runtime import create_session, input_feed

    packing = pack_int4(qcdq, output)
    outputs = []
    for path in (qcdq, output):
        session, _ = create_session(path, "cpu")
        shape = session.get_inputs()[0].shape
        image = np.random.default_rng(0).random(shape, dtype=np.float32)  # every weight used; any input will do
        outputs.append(session.run(None, input_feed(session, image))[0].astype(np.float64))
    max_abs_diff = float(np.abs(outputs[0] - outputs[1]).max())
    if max_abs_diff > 1e-6 * max(1.0, float(np.abs(outputs[0]).max())):
        Path(output).unlink()
        raise RuntimeError(f"INT4 packing changed the outputs of {qcdq} (max abs diff {max_abs_diff}); not written")
    qcdq_bytes, packed_bytes = Path(qcdq).stat().st_size, Path(output).stat().st_size
    record = {
        "onnx": str(output),
        "bytes": packed_bytes,
        "format": "int4",
        "qcdq_bytes": qcdq_bytes,
        "ratio_to_qcdq": round(packed_bytes / qcdq_bytes, 4),
        **packing,
        "parity_vs_qcdq": {
            "max_abs_diff": max_abs_diff,
            "input": "seeded uniform [0, 1) image",
            "provider": "CPUExecutionProvider",
        },
        "checker": "onnx.checker.check_model(full_check=True) passed",
        "inputs": input_record({"qcdq": qcdq}),
        "config": config,
        "versions": versions(),
        "created": utc_now(),
    }
    write_json(record_path, record)
    print(
        f"wrote {output}: {packed_bytes:,} bytes ({record['ratio_to_qcdq']:.3f}x the QCDQ file), "
        f"{packing['layers_packed']} weights INT4, {packing['layers_kept_int8']} kept int8, max abs diff {max_abs_diff}"
    )
    return record
