"""`python -m yolo_w4 …`: the workflow's steps, outside Snakemake.

python -m yolo_w4 seed --out yolov10n-seed0.pt
python -m yolo_w4 quantize --checkpoint yolov10m.pt --out w4.pt --bits 4
python -m yolo_w4 synthesize --checkpoint yolov10m.pt --out synthetic.pt
python -m yolo_w4 quantize --checkpoint yolov10m.pt --out w4.pt --method gptq --scale mse --synthetic synthetic.pt
python -m yolo_w4 export --checkpoint yolov10m.pt --quantized w4.pt --out w4.onnx
python -m yolo_w4 pack --onnx w4.onnx --out w4-int4.onnx
python -m yolo_w4 smoke --checkpoint yolov10m.pt --quantized w4.pt --onnx w4.onnx --out smoke.json
"""

import argparse
import sys
from pathlib import Path

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
    parser.add_argument("--imgsz", type=int, default=640)


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
    synthesize.add_argument("--images", type=int, default=8)
    synthesize.add_argument("--steps", type=int, default=200, help="optimiser steps per batch of 8 images")
    synthesize.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    synthesize.add_argument("--seed", type=int, default=0)
    synthesize.add_argument("--out", required=True)

    quantize = commands.add_parser("quantize", help="checkpoint -> quantized state dict")
    _common(quantize)
    quantize.add_argument("--variant", default="w4a16")
    quantize.add_argument("--bits", type=int, default=4)
    quantize.add_argument(
        "--method",
        choices=("rtn", "gptq"),
        default="rtn",
        help="gptq needs --synthetic (real images: use the workflow)",
    )
    quantize.add_argument("--synthetic", help="calibration images from `synthesize` (for --method gptq)")
    quantize.add_argument(
        "--scale", choices=("minmax", "mse"), default="minmax", help="calibrated scales: use the workflow"
    )
    quantize.add_argument("--asymmetric", action="store_true")
    quantize.add_argument("--full-range", action="store_true", help="use -8..7 instead of -7..7 at 4 bits")
    quantize.add_argument("--keep-float", action="append", default=[], metavar="GLOB")
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
    smoke.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    smoke.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    smoke.add_argument("--runs", type=int, default=20)
    smoke.add_argument("--out", required=True)
    return parser


def run(args: argparse.Namespace) -> None:
    from yolo_w4 import steps_torch as steps

    config = {k: v for k, v in vars(args).items() if k != "command"}
    if args.command == "seed":
        steps.seeded_step(args.out, args.arch, args.seed)
    elif args.command == "synthesize":
        steps.synthesize_step(
            args.checkpoint,
            args.out,
            None,
            args.images,
            args.imgsz,
            args.steps,
            seed=args.seed,
            device=args.device,
            trust=args.trust_checkpoint,
        )
    elif args.command == "quantize":
        if args.method == "gptq" and not args.synthetic:
            raise UserError("--method gptq needs calibration images: pass --synthetic FILE (from `synthesize`)")
        if args.method == "gptq" and args.asymmetric:
            raise UserError("--method gptq needs a symmetric grid (its grid has no zero point): drop --asymmetric")
        settings = {
            "weight_bits": args.bits,
            "scale": args.scale,
            "symmetric": not args.asymmetric,
            "narrow_range": not args.full_range,
            "keep_float": args.keep_float,
            "method": args.method,
        }
        if args.method == "gptq":
            settings["calibration_source"] = "synthetic"
        steps.quantize_step(
            args.checkpoint,
            args.out,
            args.variant,
            settings,
            args.head or "one2one",
            args.imgsz,
            synthetic=args.synthetic,
            trust=args.trust_checkpoint,
        )
    elif args.command == "export":
        record = Path(args.out).with_suffix(".json")
        steps.export_step(
            args.checkpoint,
            args.out,
            record,
            args.quantized,
            args.precision,
            _head(args),
            args.imgsz,
            config,
            trust=args.trust_checkpoint,
        )
    elif args.command == "pack":
        from yolo_w4.steps_onnxruntime import pack_step

        pack_step(args.onnx, args.out, Path(args.out).with_suffix(".json"), config)
    elif args.command == "smoke":
        variant = args.variant or (FP if not args.quantized else None)
        if variant is None:
            from yolo_w4.quantized_checkpoint import read_record

            variant = read_record(args.quantized)["variant"]
        steps.smoke_step(
            args.onnx,
            args.checkpoint,
            args.out,
            variant,
            args.quantized,
            args.image,
            args.device,
            args.precision,
            args.runs,
            3,
            0.25,
            _head(args),
            args.imgsz,
            config,
            trust=args.trust_checkpoint,
        )


def _head(args) -> str | None:
    """--head as given; unset: the quantized file's head (None), else one2one."""
    return args.head or (None if args.quantized else "one2one")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
