"""Benchmark: what calibrated PTQ costs per architecture, on this machine.

`python -m yolo_w4.ptq_cost --arch yolov10m.yaml --images 8 --out cost.json` builds a seeded
checkpoint of the architecture (weights do not change the cost), then times each calibrated
method on `--images` calibration images. GPTQ's cost is forward passes and statistics, which grow with the
images, plus solves, which do not: its time is also extrapolated linearly to 128 images
(the default calibration set), an upper bound. AdaRound's cost is its optimiser steps
(`iterations` x `batch` images per stage), nearly independent of the calibration set size,
so it is not extrapolated. `synthesis` times the distillation of data-free calibration
images (`calibration_source: synthetic`) for `--synthesis-steps` optimiser steps and
extrapolates exactly (each step is one forward and backward pass of the same batch) to the
config's default steps, with its default batch. `--device` (auto | cpu | cuda) says where the PTQ methods and the
synthesis run (auto: CUDA where PyTorch sees it); each row and the JSON record it. On CUDA
the timers are read after torch.cuda.synchronize(), and a PTQ method's time includes moving
the models and images to the GPU and the models back. Prints a table, writes JSON.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from yolo_w4.config import load_config
from yolo_w4.files import write_json
from yolo_w4.provenance import utc_now, versions
from yolo_w4.torch_device import resolve_torch_device, synchronize

METHODS = {  # each laid over config.yaml's variant_defaults
    "gptq": {"method": "gptq", "scale": "mse"},
    "gptq_up": {"method": "gptq", "scale": "mse", "compensate_upstream": True},
    "adaround": {"method": "adaround"},
    "synthesis": None,  # not a PTQ method: the data-free images GPTQ then calibrates on
}
SYNTHETIC = load_config()["calibration"]["synthetic"]
SYNTHESIS_STEPS = SYNTHETIC["steps"]  # the default the timing extrapolates to (with the default batch)


def stand_in_images(count: int, imgsz: int) -> list[torch.Tensor]:
    """The Ultralytics photos, repeated: image content does not change the cost."""
    from yolo_w4.preprocess import load_input
    from yolo_w4.seeded import asset_images

    photos = [torch.from_numpy(load_input(path, imgsz)[0]) for path in asset_images()]
    return [photos[i % len(photos)] for i in range(count)]


def measure_synthesis(unfused, count: int, imgsz: int, steps: int, device: str = "cpu") -> tuple[float, float]:
    """Seconds for `steps` distillation steps, and extrapolated to the default step count."""
    from yolo_w4.synthetic import synthesize_images

    synchronize(device)
    started = time.perf_counter()
    synthesize_images(
        unfused, count=count, imgsz=imgsz, steps=steps, lr=SYNTHETIC["lr"], batch=SYNTHETIC["batch"], device=device
    )
    synchronize(device)
    seconds = time.perf_counter() - started
    return seconds, seconds * SYNTHESIS_STEPS / steps


def measure(
    arch: str, count: int, imgsz: int = 640, methods=tuple(METHODS), synthesis_steps: int = 10, device: str = "auto"
) -> list[dict]:
    from yolo_w4.checkpoint import load_detector, unfused_model, unpickle_checkpoint
    from yolo_w4.config import default_recipe
    from yolo_w4.quantize import quantizable_layers, quantize_weights
    from yolo_w4.recipe import apply_calibration
    from yolo_w4.seeded import build_seeded_checkpoint

    device = resolve_torch_device(device)

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = build_seeded_checkpoint(Path(folder) / "seeded.pt", arch)
        ckpt = unpickle_checkpoint(checkpoint)  # one load: the unfused copy is taken before fusing
        unfused = unfused_model(checkpoint, ckpt=ckpt) if "synthesis" in methods else None
        detector = load_detector(checkpoint, "one2many", imgsz, ckpt=ckpt)
    images = stand_in_images(count, imgsz)
    selected = quantizable_layers(detector.model)
    parameters = sum(detector.model.get_submodule(name).weight.numel() for name in selected)
    rows = []
    for method in methods:
        if method == "synthesis":
            seconds, full = measure_synthesis(unfused, count, imgsz, synthesis_steps, device)
            rows.append(
                {
                    "arch": arch, "method": method, "device": device, "images": count, "steps": synthesis_steps,
                    "seconds": round(seconds, 2), f"seconds_{SYNTHESIS_STEPS}_steps": round(full, 1),
                }
            )  # fmt: skip
            print(
                f"{arch:16} {method:10} {device:4} {count:4} images {seconds:8.1f} s   {SYNTHESIS_STEPS} steps: {full:.0f} s",
                flush=True,
            )
            continue
        settings = default_recipe(**METHODS[method])
        model = quantize_weights(detector.model, settings)
        synchronize(device)
        started = time.perf_counter()
        apply_calibration(detector.model, model, images, settings, {name: 4 for name in selected}, device)
        synchronize(device)
        seconds = time.perf_counter() - started
        bound = round(seconds * 128 / count) if method != "adaround" else None
        rows.append(
            {
                "arch": arch, "method": method, "device": device, "convs": len(selected), "conv_weights": parameters,
                "images": count, "seconds": round(seconds, 1), "seconds_128_images_bound": bound,
            }
        )  # fmt: skip
        print(
            f"{arch:16} {method:10} {device:4} {count:4} images {seconds:8.1f} s   128 images: <= {bound or '(same)'} s",
            flush=True,
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["yolov10n.yaml", "yolov10m.yaml"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument(
        "--synthesis-steps", type=int, default=10, help="distillation steps timed (extrapolated to the config's steps)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where PTQ and synthesis run (auto: CUDA if seen)",
    )
    parser.add_argument("--out", default="results/ptq-cost.json")
    args = parser.parse_args(argv)
    device = resolve_torch_device(args.device)
    rows = [
        row
        for arch in args.arch
        for row in measure(arch, args.images, args.imgsz, args.methods, args.synthesis_steps, device)
    ]
    record = {"rows": rows, "device": device, "threads": torch.get_num_threads()}
    if device == "cuda":
        record["cuda_device"] = torch.cuda.get_device_name()
    write_json(args.out, {**record, "versions": versions(), "created": utc_now()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    import sys

    from yolo_w4.errors import UserError

    try:
        main()
    except UserError as error:  # e.g. --device cuda where PyTorch sees no GPU: one line, exit 2
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
