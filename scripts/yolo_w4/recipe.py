"""The one PTQ recipe: a variant's settings turned into `apply_*` techniques, run in order.

After Brevitas' `ptq_common.py`: each technique is one function with keyword options, in the
module of its concept; this module only decides which run, in what order, with what options.
The workflow's quantize step, the command line (through that step), the cost benchmark and
the GPU check all call `run_recipe`, so a recipe name means one thing everywhere.

Order: a bit budget picks each conv's format, or mixed precision its bit width -> the grid
(round to nearest: Brevitas per channel, groupwise.py per group) -> with calibration images
either AdaRound (from the grid, or with `adaround.start: gptq` after GPTQ), or per conv:
output-aware scale, upstream compensation, GPTQ, empirical bias correction -> data-free
BatchNorm bias correction -> biases back on FP16 values (scales are FP16 values from the grid
on: quantize.py says why).
"""

from functools import partial

from yolo_w4.quantize import layer_bit_widths, quantizable_layers, quantize_weights, round_biases_to_fp16


def calibration_techniques(settings: dict) -> list:
    """The per-conv techniques of `ptq.calibrate` that `settings` names, in the order they run."""
    from yolo_w4.ptq import apply_bias_correction, apply_gptq, apply_output_scale, apply_upstream_compensation

    options = settings["gptq"]
    techniques = []
    if settings["scale"] == "output":
        techniques.append(apply_output_scale)
    if settings["compensate_upstream"]:
        techniques.append(partial(apply_upstream_compensation, ridge=options["ridge"]))
    if settings["method"] == "gptq":
        techniques.append(partial(apply_gptq, damp=options["damp"], act_order=options["act_order"]))
    if settings["bias_correction"] == "empirical":
        techniques.append(apply_bias_correction)
    return techniques


def apply_calibration(fp_model, model, images, settings: dict, bits: dict, device: str = "cpu") -> dict:
    """The recipe's calibrated techniques on `model` in place: AdaRound, or the per-conv ones.

    device: a resolved torch device ("cpu" or "cuda"). Both models and the images move there
    for the run and come back to the CPU afterwards (even on failure), where the state dict
    is saved and the ONNX export runs.
    """
    from yolo_w4.ptq import calibrate
    from yolo_w4.reconstruct import apply_adaround

    fp_model.to(device)
    model.to(device)
    images = [image.to(device) for image in images]
    try:
        adaround = settings["method"] == "adaround"
        if adaround and settings["adaround"]["start"] == "rtn":
            return apply_adaround(
                fp_model, model, images, bits=bits, narrow_range=settings["narrow_range"], **settings["adaround"]
            )
        # the per-conv techniques (AdaRound with start: gptq learns its rounding from GPTQ's result)
        per_conv = settings if not adaround else {**settings, "method": "gptq"}
        records = calibrate(
            fp_model,
            model,
            images,
            bits=bits,
            narrow_range=per_conv["narrow_range"],
            techniques=calibration_techniques(per_conv),
            hessian=per_conv["method"] == "gptq" or per_conv["scale"] == "output",
            paired=per_conv["compensate_upstream"],
        )
        if not adaround:
            return records
        learned = apply_adaround(
            fp_model, model, images, bits=bits, narrow_range=settings["narrow_range"], **settings["adaround"]
        )
        return {name: {**records.get(name, {}), **row} for name, row in learned.items()}
    finally:
        fp_model.to("cpu")
        model.to("cpu")


def run_recipe(fp_model, settings: dict, *, images=None, ranking=None, unfused=None, imgsz=640, device="cpu"):
    """Quantize a copy of the fused FP model as `settings` (a resolved recipe) say.

    images: calibration tensors (real or synthetic) for calibrated recipes; ranking: the
    sensitivity rows for mixed precision; unfused: the unfused checkpoint model for
    `bias_correction: bn`. Returns (quantized model, settings with `layer_bits`, per-layer records).
    """
    from yolo_w4.config import calibrated

    selected = quantizable_layers(fp_model, settings["keep_float"])
    settings = dict(settings)
    budget_rows = None
    if settings["budget"]:
        from yolo_w4.budget import apply_bit_budget, layer_settings

        if images is None:
            raise ValueError("a bit budget needs calibration images to measure each format's cost")
        fp_model.to(device)  # the cost pass runs where calibration runs (CUDA where there is one)
        try:
            chosen, budget_rows = apply_bit_budget(
                fp_model,
                [image.to(device) for image in images],
                **settings["budget"],
                narrow_range=settings["narrow_range"],
                scale=settings["scale"],
                imgsz=imgsz,
                keep_float=settings["keep_float"],
                gptq_options=settings["gptq"] if settings["method"] == "gptq" else None,
            )
        finally:
            fp_model.to("cpu")
        settings.update(layer_settings(chosen))
    if settings["mixed"]:
        from yolo_w4.sensitivity import apply_mixed_precision

        ranked = [row for row in ranking if row["layer"] in selected]
        settings["layer_bits"] = apply_mixed_precision(ranked, **settings["mixed"])
    model = quantize_weights(fp_model, settings)
    records = None
    if calibrated(settings):
        if images is None:
            raise ValueError("a calibrated recipe needs calibration images")
        records = apply_calibration(fp_model, model, images, settings, layer_bit_widths(settings, selected), device)
    if settings["bias_correction"] == "bn":
        from yolo_w4.data_free import apply_bn_bias_correction

        shifts = apply_bn_bias_correction(model, fp_model, unfused, imgsz=imgsz)
        records = records or {}
        for name, shift in shifts.items():
            records.setdefault(name, {})["bn_bias_shift_max"] = shift
        print(f"data-free bias correction: {len(shifts)} of {len(selected)} convs")
    round_biases_to_fp16(model)  # the corrections above move biases off FP16 values
    if budget_rows:
        records = records or {}
        for row in budget_rows:  # each layer's measured cost in every format, and the one chosen
            layer = records.setdefault(row["layer"], {})
            layer.setdefault("format_costs", {})[row["format"]] = row["cost"]
            layer["format"] = chosen[row["layer"]]
    return model, settings, records
