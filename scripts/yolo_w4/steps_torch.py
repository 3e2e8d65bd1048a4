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
from yolo_w4.quantize import DEFAULT_SETTINGS, quantize_weights
from yolo_w4.quantized_checkpoint import load_quantized, save_quantized
from yolo_w4.seeded import build_seeded_checkpoint
from yolo_w4.smoke import smoke_test


def seeded_step(output, arch: str = "yolov10n.yaml", seed: int = 0) -> None:
    build_seeded_checkpoint(output, arch, seed)


def synthesize_step(
    checkpoint, output, picture=None, images=8, imgsz=640, steps=200, lr=0.05, seed=0, device="auto", trust=False
) -> dict:
    """checkpoint -> data-free calibration images distilled from its BatchNorm statistics (+ record, picture).

    device auto: CUDA where torch sees it (the distillation is the costly part), else CPU.
    """
    import time

    from yolo_w4.synthetic import contact_sheet, save_synthetic, synthesize_images
    from yolo_w4.torch_device import resolve_torch_device

    started = time.perf_counter()
    device = resolve_torch_device(device)
    settings = {"images": images, "imgsz": imgsz, "steps": steps, "lr": lr, "seed": seed}
    tensors = synthesize_images(
        unfused_model(checkpoint, trust=trust), count=images, imgsz=imgsz, steps=steps, lr=lr, seed=seed, device=device
    )
    settings["device"] = device
    settings["seconds"] = round(time.perf_counter() - started, 1)
    if picture:
        contact_sheet(tensors, picture)
    return save_synthetic(output, tensors, settings, input_record({"checkpoint": checkpoint}))


def quantize_step(
    checkpoint,
    output,
    variant: str,
    settings: dict,
    head="one2one",
    imgsz=640,
    calibration=None,
    sensitivity=None,
    synthetic=None,
    device="auto",
    trust=False,
) -> dict:
    """checkpoint -> quantized state dict (+ settings, checkpoint sha256, versions).

    calibration: {ids, annotations, images, limit} for variants calibrated on real images;
    synthetic: the distilled images file for `calibration_source: synthetic`; sensitivity:
    the layer ranking CSV for mixed-precision variants. device (auto | cpu | cuda): where
    calibrated PTQ runs (auto: CUDA where PyTorch sees it); recorded as settings["device"].
    """
    import time

    from yolo_w4.calibration import calibration_tensors
    from yolo_w4.config import needs_calibration, needs_synthetic
    from yolo_w4.provenance import sha256
    from yolo_w4.quantize import quantizable_layers
    from yolo_w4.sensitivity import choose_high_precision, read_sensitivity
    from yolo_w4.synthetic import load_synthetic
    from yolo_w4.torch_device import resolve_torch_device

    started = time.perf_counter()
    device = resolve_torch_device(device)
    ckpt = unpickle_checkpoint(checkpoint, trust=trust)  # once per job: fusing changes its model, so copy first
    unfused = unfused_model(checkpoint, ckpt=ckpt) if settings.get("bias_correction") == "bn" else None
    detector = load_detector(checkpoint, head, imgsz, trust=trust, ckpt=ckpt)
    settings = {**DEFAULT_SETTINGS, **settings, "device": device}
    selected = quantizable_layers(detector.model, settings["keep_float"])
    mixed = settings.get("mixed")
    if mixed:
        ranking = [row for row in read_sensitivity(sensitivity) if row["layer"] in selected]
        high = choose_high_precision(ranking, mixed["min_4bit_fraction"])
        settings["layer_bits"] = {name: mixed["high_bits"] for name in high}
    model = quantize_weights(detector.model, settings)
    records = None
    images = None
    if needs_synthetic(settings):
        images, synthesis = load_synthetic(synthetic)
        settings["synthesis_seconds"] = synthesis["settings"]["seconds"]  # counted in ptq_seconds below
        settings["synthetic_images_sha256"] = sha256(synthetic)
    elif needs_calibration(settings):
        images = calibration_tensors(
            calibration["annotations"], calibration["images"], calibration["ids"], imgsz, calibration.get("limit")
        )
    if images is not None:
        bits = {name: int(settings.get("layer_bits", {}).get(name, settings["weight_bits"])) for name in selected}
        records = calibrated_ptq(detector.model, model, images, settings, bits, device)
        settings["calibration_images"] = len(images)
    if settings.get("bias_correction") == "bn":
        from yolo_w4.data_free import bn_bias_correction, input_means

        shifts = bn_bias_correction(model, detector.model, input_means(unfused, imgsz))
        records = records or {}
        for name, shift in shifts.items():
            records.setdefault(name, {})["bn_bias_shift_max"] = shift
        print(f"data-free bias correction: {len(shifts)} of {len(selected)} convs")
    settings["ptq_seconds"] = round(time.perf_counter() - started + settings.get("synthesis_seconds", 0), 1)
    record = save_quantized(output, model, detector, variant, settings, records)
    summary = record["summary"]
    print(
        f"{variant}: {summary['quantized_layers']} convs quantized, {summary['float_layers']} float, "
        f"{summary['weights_4bit_fraction']:.1%} of conv weights at 4 bits, PTQ {settings['ptq_seconds']} s"
    )
    return record


def calibrated_ptq(fp_model, model, images, settings: dict, bits: dict, device="cpu") -> dict:
    """Run the variant's calibrated method on `model` in place: AdaRound, or GPTQ / scales / bias correction.

    device: a resolved torch device ("cpu" or "cuda"). Both models and the calibration images
    move there for the run; both models come back to the CPU afterwards (even on failure),
    where the state dict is saved and the ONNX export runs.
    """
    from yolo_w4.ptq import calibrate
    from yolo_w4.reconstruct import reconstruct

    fp_model.to(device)
    model.to(device)
    images = [image.to(device) for image in images]
    try:
        if settings.get("method") == "adaround":
            return reconstruct(
                fp_model, model, images, bits, settings["narrow_range"], **(settings.get("adaround") or {})
            )
        gptq = settings.get("gptq") or {}
        return calibrate(
            fp_model,
            model,
            images,
            settings.get("method", "rtn"),
            settings.get("bias_correction") == "empirical",
            bits,
            settings["narrow_range"],
            gptq.get("damp", 0.01),
            gptq.get("act_order", True),
            scale_search=settings["scale"] == "output",
            compensate_upstream=bool(settings.get("compensate_upstream")),
            ridge=gptq.get("ridge", 0.01),
        )
    finally:
        fp_model.to("cpu")
        model.to("cpu")


def sensitivity_step(
    checkpoint, calibration: dict, table, plot, head="one2one", imgsz=640, images_used=32, device="auto", trust=False
) -> list:
    """Layer sensitivity ranking -> CSV + plot. device (auto | cpu | cuda): where the forward passes run."""
    from yolo_w4.calibration import calibration_tensors
    from yolo_w4.plots import plot_sensitivity
    from yolo_w4.sensitivity import layer_sensitivity, write_sensitivity
    from yolo_w4.torch_device import resolve_torch_device

    device = resolve_torch_device(device)
    detector = load_detector(checkpoint, head, imgsz, trust=trust)
    images = calibration_tensors(
        calibration["annotations"], calibration["images"], calibration["ids"], imgsz, images_used
    )
    model = detector.model.to(device)
    rows = layer_sensitivity(model, [image.to(device) for image in images], imgsz)
    model.to("cpu")
    write_sensitivity(table, rows)
    plot_sensitivity(rows, plot)
    print(f"layer sensitivity on {device}; most sensitive: {', '.join(row['layer'] for row in rows[:5])}")
    return rows


def _load_model(checkpoint, quantized, head, imgsz, trust=False):
    """(PyTorch model, detector, quantized record or None): the FP model, or the rebuilt quantized one."""
    if quantized:
        model, detector, record = load_quantized(quantized, checkpoint, trust)
        if head is not None and head != detector.head:
            raise UserError(
                f"{quantized} was quantized with head {detector.head}, so head {head} cannot be exported from it; "
                f"re-quantize with head {head}, or leave the head to the quantized file"
            )
        return model, detector, record
    detector = load_detector(checkpoint, head, imgsz, trust=trust)
    return detector.model, detector, None


def export_step(
    checkpoint,
    output,
    record_path,
    quantized=None,
    precision="fp32",
    head="one2one",
    imgsz=640,
    config=None,
    trust=False,
) -> dict:
    """FP (quantized=None) or quantized model -> ONNX, plus a JSON describing the graph."""
    from yolo_w4.export import model_metadata

    model, detector, quantized_record = _load_model(checkpoint, quantized, head, imgsz, trust)
    settings = quantized_record["settings"] if quantized_record else None
    variant = quantized_record["variant"] if quantized_record else FP
    metadata = model_metadata(detector, precision, variant, settings)
    if quantized:
        export_qcdq(model, output, detector.imgsz, precision, metadata=metadata)
    else:
        export_fp(model, output, detector.imgsz, precision, metadata=metadata)
    inputs = {"checkpoint": checkpoint, **({"quantized": quantized} if quantized else {})}
    record = {
        "onnx": str(output),
        "bytes": Path(output).stat().st_size,
        "format": "qcdq" if quantized else "float",
        "precision": precision,
        "settings": settings,
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
    device="auto",
    precision="fp32",
    runs=20,
    warmup=3,
    conf=0.25,
    head="one2one",
    imgsz=640,
    config=None,
    trust=False,
) -> dict:
    """ONNX -> smoke JSON: providers, I/O, latency, detections on a photo, parity with PyTorch."""
    model, detector, _ = _load_model(checkpoint, quantized, head, imgsz, trust)
    result = smoke_test(onnx_path, model, detector, variant, image, device, precision, runs, warmup, conf)
    result["config"] = config
    write_json(output, result)
    print(
        f"{variant}: {result['provider_used']} {precision}, median {result['latency']['median_ms']} ms, "
        f"parity {result['parity']['sqnr_db']} dB, {result['detections']['count']} detections"
    )
    return result
