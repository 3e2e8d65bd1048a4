"""The steps of `envs/torch.yaml` (PyTorch, Brevitas, Ultralytics): seed, synthesize, quantize, export, smoke.

Each reads its inputs, calls the library, writes its outputs. Rule scripts and the `python -m yolo_w4` command line both call these, so the two can
never drift apart. Every JSON written records versions, input hashes and configuration.
"""

from pathlib import Path

from yolo_w4.checkpoint import load_detector, unfused_model, unpickle_checkpoint
from yolo_w4.errors import UserError
from yolo_w4.export import export_fp, export_qcdq, onnx_summary
from yolo_w4.files import write_json
from yolo_w4.names import FP
from yolo_w4.provenance import input_record, utc_now, versions
from yolo_w4.quantized_checkpoint import load_dequantized, save_quantized
from yolo_w4.seeded import build_seeded_checkpoint
from yolo_w4.smoke import smoke_test


def calibration_tensors(calibration, imgsz: int, limit: int | None = None) -> list:
    """The photos of a calibration record (rule calibration_subset), letterboxed like evaluation images,
    as (1, 3, imgsz, imgsz) tensors."""
    import torch

    from yolo_w4.calibration import calibration_files
    from yolo_w4.preprocess import load_input

    return [torch.from_numpy(load_input(path, imgsz)[0]) for path in calibration_files(calibration, limit)]


def _torch_threads() -> int:
    """PyTorch's intra-op threads in this process (a Snakemake job's threads: rule_runner sets them)."""
    import torch

    return torch.get_num_threads()


def seeded_step(output, arch: str = "yolov10n.yaml", seed: int = 0) -> None:
    build_seeded_checkpoint(output, arch, seed)


def synthesize_step(
    checkpoint,
    output,
    picture=None,
    *,
    images: int,
    imgsz: int,
    steps: int,
    lr: float,
    seed: int,
    device: str,
    batch: int,
    coarse: dict | None = None,
    trust=False,
) -> dict:
    """checkpoint -> data-free calibration images distilled from its BatchNorm statistics (+ record, picture).

    device auto: CUDA where torch sees it (the distillation is the costly part), else CPU.
    """
    import time

    from yolo_w4.synthetic import contact_sheet, save_synthetic, synthesize_images
    from yolo_w4.torch_device import resolve_torch_device

    started = time.perf_counter()
    device = resolve_torch_device(device)
    settings = {
        "images": images,
        "imgsz": imgsz,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "batch": batch,
        "coarse": coarse,
    }
    tensors = synthesize_images(
        unfused_model(checkpoint, trust=trust),
        count=images,
        imgsz=imgsz,
        steps=steps,
        lr=lr,
        batch=batch,
        seed=seed,
        device=device,
        coarse_imgsz=(coarse or {}).get("imgsz"),
        coarse_steps=(coarse or {}).get("steps", 0),
    )
    settings["device"] = device
    settings["threads"] = _torch_threads()
    settings["seconds"] = round(time.perf_counter() - started, 1)
    if picture:
        contact_sheet(tensors, picture)
    return save_synthetic(output, tensors, settings, input_record({"checkpoint": checkpoint}))


def quantize_step(
    checkpoint,
    output,
    variant: str,
    settings: dict,
    *,
    head: str,
    imgsz: int,
    device: str,
    calibration=None,
    sensitivity=None,
    synthetic=None,
    trust=False,
) -> dict:
    """checkpoint -> quantized state dict (+ settings, checkpoint sha256, versions), by `recipe.run_recipe`.

    settings: the variant's resolved recipe (yolo_w4.config.recipe_settings). calibration:
    {ids, annotations, images, limit} for recipes calibrated on real images; synthetic: the
    distilled images file for `calibration_source: synthetic`; sensitivity: the layer ranking
    CSV for mixed precision. device (auto | cpu | cuda): where calibrated PTQ runs (auto: CUDA
    where PyTorch sees it); recorded as settings["device"].
    """
    import time

    from yolo_w4.config import needs_calibration, needs_synthetic
    from yolo_w4.provenance import sha256
    from yolo_w4.recipe import run_recipe
    from yolo_w4.sensitivity import read_sensitivity
    from yolo_w4.synthetic import load_synthetic
    from yolo_w4.torch_device import resolve_torch_device

    started = time.perf_counter()
    settings = {**settings, "device": resolve_torch_device(device), "threads": _torch_threads()}
    ckpt = unpickle_checkpoint(checkpoint, trust=trust)  # once per job: fusing changes its model, so copy first
    unfused = unfused_model(checkpoint, ckpt=ckpt) if settings["bias_correction"] == "bn" else None
    detector = load_detector(checkpoint, head, imgsz, trust=trust, ckpt=ckpt)
    images = None
    if needs_synthetic(settings):
        images, synthesis = load_synthetic(synthetic)
        settings["synthesis_seconds"] = synthesis["settings"]["seconds"]  # counted in ptq_seconds below
        settings["synthetic_images_sha256"] = sha256(synthetic)
    elif needs_calibration(settings):
        from yolo_w4.calibration import describe_calibration

        images = calibration_tensors(calibration["record"], imgsz, calibration.get("limit"))
        settings["calibration_photos"] = describe_calibration(calibration["record"])
    if settings.get("calibration_source_reason"):
        print(f"{variant}: calibration_source {settings['calibration_source_reason']}")
    if images is not None:
        settings["calibration_image_count"] = len(images)
    ranking = read_sensitivity(sensitivity) if settings["mixed"] else None
    model, settings, records = run_recipe(
        detector.model,
        settings,
        images=images,
        ranking=ranking,
        unfused=unfused,
        imgsz=imgsz,
        device=settings["device"],
    )
    settings["ptq_seconds"] = round(time.perf_counter() - started + settings.get("synthesis_seconds", 0), 1)
    record = save_quantized(output, model, detector, variant, settings, records)
    summary = record["summary"]
    print(
        f"{variant}: {summary['quantized_layers']} convs quantized, {summary['float_layers']} float, "
        f"{summary['weights_4bit_fraction']:.1%} of conv weights at 4 bits, PTQ {settings['ptq_seconds']} s"
    )
    return record


def sensitivity_step(
    checkpoint, calibration, table, plot, *, head: str, imgsz: int, images_used: int, device: str, trust=False
) -> list:
    """Layer sensitivity ranking -> CSV + plot, on the first `images_used` photos of the calibration record.

    device (auto | cpu | cuda): where the forward passes run."""
    from yolo_w4.plots import plot_sensitivity
    from yolo_w4.sensitivity import layer_sensitivity, write_sensitivity
    from yolo_w4.torch_device import resolve_torch_device

    device = resolve_torch_device(device)
    detector = load_detector(checkpoint, head, imgsz, trust=trust)
    images = calibration_tensors(calibration, imgsz, images_used)
    model = detector.model.to(device)
    rows = layer_sensitivity(model, [image.to(device) for image in images], imgsz)
    model.to("cpu")
    write_sensitivity(table, rows)
    plot_sensitivity(rows, plot)
    print(f"layer sensitivity on {device}; most sensitive: {', '.join(row['layer'] for row in rows[:5])}")
    return rows


def _check_head(quantized, detector, head) -> None:
    if head is not None and head != detector.head:
        raise UserError(
            f"{quantized} was quantized with head {detector.head}, so head {head} cannot be exported from it; "
            f"re-quantize with head {head}, or leave the head to the quantized file"
        )


def _load_model(checkpoint, quantized, head, imgsz, trust=False):
    """(PyTorch model, detector, quantized record or None, integers or None): the FP model, or the
    quantized one as plain convs with its dequantized weights and its integers (`load_dequantized`)."""
    if quantized:
        model, detector, record, weights = load_dequantized(quantized, checkpoint, trust)
        _check_head(quantized, detector, head)
        return model, detector, record, weights
    detector = load_detector(checkpoint, head, imgsz, trust=trust)
    return detector.model, detector, None, None


def export_step(
    checkpoint,
    output,
    record_path,
    quantized=None,
    *,
    precision: str,
    head: str | None,
    imgsz: int,
    config=None,
    trust=False,
) -> dict:
    """FP (quantized=None) or quantized model -> ONNX, plus a JSON describing the graph."""
    from yolo_w4.export import conv_bits_per_weight, model_metadata

    model, detector, quantized_record, weights = _load_model(checkpoint, quantized, head, imgsz, trust)
    settings = quantized_record["settings"] if quantized_record else None
    variant = quantized_record["variant"] if quantized_record else FP
    bits_per_weight = conv_bits_per_weight(quantized_record, precision)
    metadata = model_metadata(detector, precision, variant, settings, bits_per_weight=bits_per_weight)
    if quantized:
        export_qcdq(model, output, detector.imgsz, precision, metadata=metadata, weights=weights)
    else:
        export_fp(model, output, detector.imgsz, precision, metadata=metadata)
    inputs = {"checkpoint": checkpoint, **({"quantized": quantized} if quantized else {})}
    record = {
        "onnx": str(output),
        "bytes": Path(output).stat().st_size,
        "format": "qcdq" if quantized else "float",
        "precision": precision,
        "settings": settings,
        "bits_per_weight": bits_per_weight,
        "checker": "onnx.checker.check_model(full_check=True) passed",
        **onnx_summary(output),
        "checkpoint": detector.describe(),
        "inputs": input_record(inputs),
        "config": config,
        "versions": versions(),
        "created": utc_now(),
    }
    write_json(record_path, record)
    counts = record["node_counts"]
    print(f"wrote {output}: {record['bytes']:,} bytes, {counts}, weight Clip ranges {record['weight_clip_ranges']}")
    return record


def smoke_step(
    onnx_path,
    checkpoint,
    output,
    variant: str,
    quantized=None,
    image=None,
    *,
    device: str,
    precision: str,
    runs: int,
    warmup: int,
    conf: float,
    head: str | None,
    imgsz: int,
    config=None,
    trust=False,
) -> dict:
    """ONNX -> smoke JSON: providers, I/O, latency, detections on a photo, parity with PyTorch."""
    model, detector, _, _ = _load_model(checkpoint, quantized, head, imgsz, trust)
    result = smoke_test(onnx_path, model, detector, variant, image, device, precision, runs, warmup, conf)
    result["config"] = config
    write_json(output, result)
    print(
        f"{variant}: {result['provider_used']} {precision}, median {result['latency']['median_ms']} ms, "
        f"parity {result['parity']['sqnr_db']} dB, {result['detections']['count']} detections"
    )
    return result
