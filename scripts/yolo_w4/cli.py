"""`python -m yolo_w4 …`: the workflow's steps, outside Snakemake, reading the same config/config.yaml.

python -m yolo_w4 seed --out yolov10n-seed0.pt
python -m yolo_w4 quantize --checkpoint yolov10m.pt --out w4.pt        # the default recipe (w4a16), the config's photos
python -m yolo_w4 quantize --checkpoint yolov10m.pt --out w4.pt --variant w4a16_g32 \
    --calibration-images train2017 --calibration-annotations instances_train2017.json
python -m yolo_w4 synthesize --checkpoint yolov10m.pt --out synthetic.pt
python -m yolo_w4 quantize --checkpoint yolov10m.pt --out w4.pt --synthetic synthetic.pt   # reuse distilled images
python -m yolo_w4 quantize --checkpoint yolov10m.pt --out w4.pt --variant w4a16_rtn --scale mse   # override a setting
python -m yolo_w4 export --checkpoint yolov10m.pt --quantized w4.pt --out w4.onnx
python -m yolo_w4 pack --onnx w4.onnx --out w4-int4.onnx
python -m yolo_w4 smoke --checkpoint yolov10m.pt --quantized w4.pt --onnx w4.onnx --out smoke.json
python -m yolo_w4 download                  # the config's checkpoint and COCO val2017, if absent (verified)
"""

import argparse
import sys
from pathlib import Path

from yolo_w4.config import DEFAULT_CONFIG
from yolo_w4.errors import UserError
from yolo_w4.names import FP


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="Ultralytics detection checkpoint (.pt)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle without the allowlist (only for a file you trust: it may run code it holds)",
    )
    parser.add_argument(
        "--head",
        choices=("one2one", "one2many"),
        default=None,
        help="one2one (default) or one2many; with --quantized the quantized file's head, which this must not contradict",
    )
    parser.add_argument("--imgsz", type=int, help="input side in pixels (default: the config's imgsz)")
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="a workflow config laid over config/config.yaml, as Snakemake does",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m yolo_w4", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    seed = commands.add_parser("seed", help="write a random-weight checkpoint from an Ultralytics YAML")
    seed.add_argument("--arch", default="yolov10n.yaml")
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument("--out", required=True)

    synthesize = commands.add_parser(
        "synthesize", help="checkpoint -> data-free calibration images (BatchNorm statistics)"
    )
    _common(synthesize)
    synthesize.add_argument("--images", type=int, help="default: the config's calibration.synthetic.images")
    synthesize.add_argument("--steps", type=int, help="optimiser steps per batch of images (default: the config's)")
    synthesize.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the config's device")
    synthesize.add_argument("--seed", type=int, help="default: the config's calibration.synthetic.seed")
    synthesize.add_argument("--out", required=True)

    quantize = commands.add_parser(
        "quantize",
        help="checkpoint -> quantized state dict, by a recipe of the config's catalog (default: the workflow's)",
    )
    _common(quantize)
    quantize.add_argument(
        "--variant", help="recipe name from the config's `variants` catalog (default: the first of its `build`)"
    )
    quantize.add_argument("--bits", type=int, help="override weight_bits")
    quantize.add_argument("--method", choices=("rtn", "gptq", "adaround"), help="override method")
    quantize.add_argument("--scale", choices=("minmax", "mse", "output"), help="override scale")
    quantize.add_argument("--bias-correction", choices=("none", "bn", "empirical"), help="override bias_correction")
    quantize.add_argument(
        "--compensate-upstream", action=argparse.BooleanOptionalAction, help="override compensate_upstream"
    )
    quantize.add_argument("--asymmetric", action="store_true", help="override symmetric: false")
    quantize.add_argument("--full-range", action="store_true", help="override narrow_range: false (-8..7 at 4 bits)")
    quantize.add_argument("--keep-float", action="append", metavar="GLOB", help="override keep_float (repeatable)")
    quantize.add_argument("--synthetic", help="distilled calibration images from `synthesize` (else distilled here)")
    quantize.add_argument(
        "--calibration-images",
        help="folder of calibration photos (default: the config's, outside its evaluation subset)",
    )
    quantize.add_argument("--calibration-annotations", help="their COCO annotation file (else: the files by name)")
    quantize.add_argument(
        "--sensitivity", help="layer sensitivity CSV (the layer_sensitivity rule's) for mixed recipes"
    )
    quantize.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where calibrated PTQ runs")
    quantize.add_argument("--out", required=True)

    export = commands.add_parser("export", help="FP or quantized model -> ONNX (QCDQ when --quantized)")
    _common(export)
    export.add_argument("--quantized", help="state dict from `quantize`; omit for the FP baseline")
    export.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    export.add_argument("--out", required=True)

    pack = commands.add_parser("pack", help="QCDQ ONNX -> the same model with 4-bit weights packed as ONNX INT4")
    pack.add_argument("--onnx", required=True, help="QCDQ export of a quantized model")
    pack.add_argument("--out", required=True)

    smoke = commands.add_parser("smoke", help="run an ONNX in ONNX Runtime, compare with PyTorch")
    _common(smoke)
    smoke.add_argument("--onnx", required=True)
    smoke.add_argument("--quantized")
    smoke.add_argument("--variant", default=None, help="name in the JSON (default: fp or the quantized variant)")
    smoke.add_argument("--image", default=None, help="photo to detect on (default: Ultralytics' bus.jpg)")
    smoke.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the config's device")
    smoke.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    smoke.add_argument("--runs", type=int, help="timed runs (default: the config's smoke.runs)")
    smoke.add_argument("--out", required=True)

    download = commands.add_parser(
        "download", help="fetch the official checkpoint and COCO val2017 the config names, if absent, verified"
    )
    download.add_argument("--only", choices=("checkpoint", "coco"), help="fetch only this (default: both)")
    download.add_argument("--checkpoint", help="where the checkpoint goes (default: the config's checkpoint)")
    download.add_argument("--coco-images", help="image folder to make (default: the config's coco.images)")
    download.add_argument("--coco-annotations", help="annotation file to make (default: the config's coco.annotations)")
    download.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="a workflow config laid over config/config.yaml (its `sources`)"
    )
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "download":  # no PyTorch needed
        from yolo_w4.config import load_config
        from yolo_w4.download import download_inputs

        download_inputs(load_config(args.config), args.only, args.checkpoint, args.coco_images, args.coco_annotations)
        return
    from yolo_w4 import steps_torch as steps
    from yolo_w4.files import refuse_overwriting_inputs

    refuse_overwriting_inputs(*step_files(args))
    config = cli_config(args) if hasattr(args, "config") else None
    record = {k: v for k, v in vars(args).items() if k != "command"}  # what the JSONs say was asked
    imgsz = config["imgsz"] if config else None
    trust = getattr(args, "trust_checkpoint", False) or (config["trust_checkpoint"] if config else False)
    if args.command == "seed":
        steps.seeded_step(args.out, args.arch, args.seed)
    elif args.command == "synthesize":
        synthetic = config["calibration"]["synthetic"]
        steps.synthesize_step(
            args.checkpoint,
            args.out,
            images=synthetic["images"],
            imgsz=args.imgsz or synthetic["imgsz"] or imgsz,
            steps=synthetic["steps"],
            lr=synthetic["lr"],
            seed=synthetic["seed"],
            batch=synthetic["batch"],
            coarse=synthetic["coarse"],
            device=config["device"],
            trust=trust,
        )
    elif args.command == "quantize":
        quantize(args, config, imgsz, trust)
    elif args.command == "export":
        steps.export_step(
            args.checkpoint,
            args.out,
            Path(args.out).with_suffix(".json"),
            args.quantized,
            precision=args.precision,
            head=_head(args, config),
            imgsz=imgsz,
            config=record,
            trust=trust,
        )
    elif args.command == "pack":
        from yolo_w4.steps_onnxruntime import pack_step

        pack_step(args.onnx, args.out, Path(args.out).with_suffix(".json"), record)
    elif args.command == "smoke":
        variant = args.variant or (FP if not args.quantized else None)
        if variant is None:
            from yolo_w4.quantized_checkpoint import read_record

            variant = read_record(args.quantized)["variant"]
        smoke = config["smoke"]
        steps.smoke_step(
            args.onnx,
            args.checkpoint,
            args.out,
            variant,
            args.quantized,
            args.image or smoke["image"],
            device=config["device"],
            precision=args.precision,
            runs=smoke["runs"],
            warmup=smoke["warmup"],
            conf=smoke["conf"],
            head=_head(args, config),
            imgsz=imgsz,
            config=record,
            trust=trust,
        )


CONFIG_FLAGS = {  # command-line flag (its argparse dest) -> the config key it overrides
    "imgsz": ("imgsz",),
    "device": ("device",),
    "images": ("calibration", "synthetic", "images"),
    "steps": ("calibration", "synthetic", "steps"),
    "seed": ("calibration", "synthetic", "seed"),
    "runs": ("smoke", "runs"),
}


def cli_config(args) -> dict:
    """The --config file with the flags that override config keys laid over it, each checked by the schema."""
    from yolo_w4.config import load_config, merge, validate_config

    config = load_config(args.config)
    for dest, keys in CONFIG_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        override = value
        for key in reversed(keys):
            override = {key: override}
        try:
            config = validate_config(merge(config, override))
        except UserError as error:
            raise UserError(f"--{dest} {value} is refused: {error}") from None
    return config


INPUT_FLAGS = (  # the argparse dests of the flags that name files a command reads
    *("config", "checkpoint", "quantized", "onnx"),
    *("synthetic", "calibration_annotations", "sensitivity", "image"),
)


def step_files(args) -> tuple[list, list]:
    """(outputs, inputs) of a command: what it writes, and the files it reads, which no output may replace."""
    outputs = [args.out]
    if args.command in ("export", "pack"):  # the JSON that describes the ONNX
        outputs.append(str(Path(args.out).with_suffix(".json")))
    return outputs, [getattr(args, dest, None) for dest in INPUT_FLAGS]


def cli_recipe(args, config: dict) -> tuple[str, dict]:
    """(name, settings): the catalog recipe `--variant` (default: the config's first `build`) with flags laid over it."""
    from yolo_w4.config import merge, recipe_settings, validate_config

    name = args.variant or config["build"][0]
    if name not in config["variants"]:
        raise UserError(
            f"--variant {name} is not a recipe in {args.config} (the catalog has {', '.join(config['variants'])})"
        )
    overrides = {
        key: value
        for key, value in (
            ("weight_bits", args.bits),
            ("method", args.method),
            ("scale", args.scale),
            ("bias_correction", args.bias_correction),
            ("compensate_upstream", args.compensate_upstream),
            ("keep_float", args.keep_float),
            ("symmetric", False if args.asymmetric else None),
            ("narrow_range", False if args.full_range else None),
            ("calibration_source", "synthetic" if args.synthetic else "images" if args.calibration_images else None),
        )
        if value is not None
    }
    overridden = merge(config, {"variants": {name: overrides}})
    validate_config(overridden)  # flags are checked like config values, combinations included
    return name, recipe_settings(overridden, name)


def quantize(args, config: dict, imgsz: int, trust: bool) -> None:
    """`quantize`: resolve the recipe, find its calibration images (distilling them if need be), run the step."""
    import tempfile

    from yolo_w4 import steps_torch as steps
    from yolo_w4.calibration import calibration_folder, resolve_calibration_source, spare_photos
    from yolo_w4.config import needs_calibration, needs_synthetic

    name, settings = cli_recipe(args, config)
    folder = args.calibration_images or calibration_folder(config)[0]
    settings = resolve_calibration_source(settings, bool(args.calibration_images) or spare_photos(config), folder)
    head = args.head or config["head"]
    device = config["device"]
    calibration = None
    with tempfile.TemporaryDirectory() as work:
        synthetic = args.synthetic
        if needs_synthetic(settings) and not synthetic:
            synthetic = str(Path(work) / "synthetic.pt")
            options = config["calibration"]["synthetic"]
            print(f"{name} calibrates on distilled images: distilling {options['images']} (pass --synthetic to reuse)")
            steps.synthesize_step(
                args.checkpoint,
                synthetic,
                images=options["images"],
                imgsz=options["imgsz"] or imgsz,
                steps=options["steps"],
                lr=options["lr"],
                seed=options["seed"],
                batch=options["batch"],
                coarse=options["coarse"],
                device=device,
                trust=trust,
            )
        if needs_calibration(settings):
            calibration = real_calibration(args, config, Path(work), name)
        if settings["mixed"] and not args.sensitivity:
            raise UserError(f"{name} uses mixed precision: pass --sensitivity CSV (the layer_sensitivity rule's table)")
        steps.quantize_step(
            args.checkpoint,
            args.out,
            name,
            settings,
            head=head,
            imgsz=imgsz,
            calibration=calibration,
            sensitivity=args.sensitivity,
            synthetic=synthetic,
            device=device,
            trust=trust,
        )


def real_calibration(args, config: dict, work: Path, name: str) -> dict:
    """Real calibration photos: --calibration-images (--calibration-annotations), else the config's
    `calibration` folder; from the evaluation folder, never a photo of the config's evaluation subset."""
    from yolo_w4.calibration import calibration_folder
    from yolo_w4.steps_onnxruntime import calibration_step, subset_step

    options, coco = config["calibration"], config["coco"]
    if args.calibration_images:
        images, annotations = args.calibration_images, args.calibration_annotations
    else:
        images, annotations = calibration_folder(config)
    absent = next((p for p in (images, annotations) if p and not Path(p).exists()), None)
    if absent:
        raise UserError(
            f"{name} calibrates on real images, but {absent} is not there: "
            "pass --calibration-images DIR (--calibration-annotations FILE), or --synthetic FILE for data-free images"
        )
    eval_subset = None
    if Path(coco["images"]).is_dir() and (coco["annotations"] is None or Path(coco["annotations"]).is_file()):
        eval_subset = work / "evaluation.json"  # the subset the workflow would score: set aside
        subset_step(
            coco["annotations"],
            coco["images"],
            work / "evaluation_ids.txt",
            eval_subset,
            max_images=coco["max_images"],
            image_ids_list=coco["image_ids_list"],
        )
    record = work / "calibration.json"
    calibration_step(
        images,
        record,
        max_images=options["max_images"],
        annotations=annotations,
        eval_subset=eval_subset,
        eval_images=coco["images"] if eval_subset else None,
        image_ids_list=None if args.calibration_images else options["image_ids_list"],
    )
    return {"record": record, "limit": options["max_images"]}


def _head(args, config: dict) -> str | None:
    """--head as given; unset: the quantized file's head (None), else the config's."""
    return args.head or (None if args.quantized else config["head"])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
