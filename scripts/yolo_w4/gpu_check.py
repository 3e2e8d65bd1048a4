"""`make gpu-check`: what the CUDA path really does on this machine, as one table and one JSON.

A benchmark, not a test: run it wherever an NVIDIA GPU is at hand (a few minutes). It records
PyTorch's CUDA build and device; whether ONNX Runtime's CUDA provider loads with PyTorch
imported (the torch env) and without it (an env built like envs/onnxruntime.yaml); the demo
workflow with `device: cuda` (provider and precision of every ONNX Runtime job); FP16 vs
FP32 parity and CUDA vs CPU of FP, W4 per channel and W4 in groups of 32 (blocked
DequantizeLinear, FP16 scales); batch-1 and batch-8 latency of FP16 FP vs both W4 QCDQ models
(per channel with and without `session.disable_quant_qdq`), on a seeded YOLOv10m (speed does
not depend on training); and the default build's PTQ time on CUDA. Every section runs on its own: one
that fails is recorded with its error and the others still run. Without a GPU it says so in
one line and exits 0.

    python -m yolo_w4.gpu_check --out results/gpu-check
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (scripts/yolo_w4/ -> ../..)
# the W4 grids checked: per channel, symmetric groups of 32 and the default build's asymmetric groups of 64
GRIDS = {"w4": {}, "w4g32": {"group_size": 32}, "w4g64a": {"group_size": 64, "symmetric": False}}
LABELS = {"fp": "FP", "w4": "W4 QCDQ", "w4g32": "W4 g32 QCDQ", "w4g64a": "W4 g64-asym QCDQ"}


def torch_facts() -> dict:
    import torch

    facts = {
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            device=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            facts["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            facts["driver"] = None
    return facts


def ort_with_torch(device: str = "cuda") -> dict:
    """The CUDA provider in a process that imported PyTorch first (the torch env's rules)."""
    import torch  # noqa: F401 - loaded first on purpose: its CUDA libraries are then in the process

    from yolo_w4.runtime import probe_providers

    return probe_providers(device)


PROBE_ALONE = """
import json, sys
sys.path.insert(0, {scripts!r})
from yolo_w4.runtime import probe_providers
record = probe_providers({device!r})
record["torch_imported"] = "torch" in sys.modules
print(json.dumps(record))
"""


def ort_without_torch(device: str = "cuda") -> dict:
    """The CUDA provider in a fresh process that never imports PyTorch (the onnxruntime env's rules)."""
    code = PROBE_ALONE.format(scripts=str(ROOT / "scripts"), device=device)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ort_records(run: Path) -> list[dict]:
    """(file, model, provider, precision) of every ONNX Runtime record a workflow run wrote."""
    rows = []
    for path in sorted(run.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        entries = data["models"].items() if isinstance(data.get("models"), dict) else [(data.get("variant"), data)]
        for name, entry in entries:
            if isinstance(entry, dict) and "provider_used" in entry:
                rows.append(
                    {
                        "file": str(path.relative_to(run)),
                        "model": name,
                        "provider_used": entry["provider_used"],
                        "precision": entry.get("precision", data.get("precision")),
                    }
                )
    return rows


def _settings(path) -> dict:
    """The `settings` a workflow .pt artifact (synthetic images, quantized state dict) records."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("settings") or {}
    except Exception as error:
        return {"device": f"unreadable: {error}"}


def demo_workflow(device: str = "cuda", run_id: str = "gpu-check-demo", cores: int = 4) -> dict:
    """`snakemake` on the offline demo with device: cuda; which provider each ONNX Runtime job used."""
    run = ROOT / "results" / run_id
    command = [
        sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", "config/demo.yaml",
        "--config", f"run_id={run_id}", f"device={device}", "--forceall",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = round(time.perf_counter() - started, 1)
    rows = _ort_records(run)
    synthetic = sorted(run.glob("calibration/*-synthetic.pt"))
    quantized = sorted(run.glob("quantized/*-ptq.pt"))
    synthesis_device = _settings(synthetic[0]).get("device") if synthetic else None
    quantize_device = _settings(quantized[0]).get("device") if quantized else None
    return {
        "command": " ".join(command),
        "exit_code": done.returncode,
        "seconds": seconds,
        "log_tail": (done.stderr or "").strip().splitlines()[-15:] if done.returncode else [],
        "ort_jobs": rows,
        "all_cuda": bool(rows)
        and all(
            row["provider_used"] == "CUDAExecutionProvider" for row in rows if not row["file"].endswith("int4-ptq.json")
        ),
        "precisions": sorted({str(row["precision"]) for row in rows}),
        "synthesis_device": synthesis_device,
        "quantize_device": quantize_device,
    }


class SeededModel:
    """A seeded model and its ONNX exports, built once and shared by the sections below.

    Both use the dense `one2many` head, whose every output element can be compared (random
    weights make one2one's top-300 rows near-ties that reorder under any rounding).
    """

    def __init__(self, arch: str, folder: Path, imgsz: int = 640):
        from yolo_w4.seeded import build_seeded_checkpoint

        self.folder, self.imgsz = folder, imgsz
        self.checkpoint = build_seeded_checkpoint(folder / f"{Path(arch).stem}-seed0.pt", arch)
        self._detectors: dict = {}
        self._quantized: dict = {}
        self.files: dict = {}
        self.export_seconds: dict = {}

    def detector(self, head: str):
        from yolo_w4.checkpoint import load_detector

        if head not in self._detectors:
            self._detectors[head] = load_detector(self.checkpoint, head, self.imgsz)
        return self._detectors[head]

    def quantized(self, head: str, kind: str = "w4"):
        """W4 round-to-nearest on grid `kind` (GRIDS): the rounding method does not change the graph or its speed."""
        from yolo_w4.config import default_recipe
        from yolo_w4.quantize import quantize_weights

        key = (head, kind)
        if key not in self._quantized:
            settings = default_recipe(weight_bits=4, **GRIDS[kind])
            self._quantized[key] = quantize_weights(self.detector(head).model, settings)
        return self._quantized[key]

    def onnx(self, kind: str, precision: str, batch: int = 1, head: str = "one2one") -> Path:
        """kind: fp, w4 (per channel, opset 17), w4g32 or w4g64a (blocked DequantizeLinear, opset 21)."""
        from yolo_w4.export import export_fp, export_qcdq

        key = f"{kind}-{head}-{precision}-b{batch}"
        if key not in self.files:
            path = self.folder / f"{key}.onnx"
            started = time.perf_counter()
            if kind == "fp":
                export_fp(self.detector(head).model, path, self.imgsz, precision, batch)
            else:
                export_qcdq(self.quantized(head, kind), path, self.imgsz, precision, batch)
            self.export_seconds[key] = round(time.perf_counter() - started, 1)
            self.files[key] = path
        return self.files[key]

    def batch(self, size: int):
        """`size` letterboxed real photos (the Ultralytics assets, repeated), float32 NCHW."""
        import numpy as np

        from yolo_w4.preprocess import load_input
        from yolo_w4.seeded import asset_images

        photos = [load_input(path, self.imgsz)[0] for path in asset_images()]
        return np.concatenate([photos[i % len(photos)] for i in range(size)])


def _run(path, device: str, tensor, disable_quant_qdq: bool = True):
    from yolo_w4.runtime import create_session, input_feed

    session, record = create_session(path, device, disable_quant_qdq)
    return session.run(None, input_feed(session, tensor))[0], record


def parity(model: SeededModel, device: str = "cuda") -> dict:
    """FP16 vs FP32 and CUDA vs CPU, for the FP and the W4 QCDQ model; W4 vs its PyTorch fake-quant model.

    Random weights make a W4 network sensitive (a 0.1% input change costs it ~36 dB on
    YOLOv10n), so W4 FP16 is judged against W4 FP32 beside FP16 vs FP32 of the FP model.
    """
    import torch

    from yolo_w4.parity import compare_outputs

    head = "one2many"
    x = model.batch(1)
    outputs, providers = {}, {}
    for kind in LABELS:
        for precision in ("fp32", "fp16"):
            key = f"{kind}-{precision}"
            output, record = _run(model.onnx(kind, precision, head=head), device, x)
            outputs[key], providers[key] = output.astype("float32"), record["provider_used"]
        outputs[f"{kind}-fp32-cpu"] = _run(model.onnx(kind, "fp32", head=head), "cpu", x)[0]
    result = {"providers": providers}
    for kind in LABELS:
        prefix = "" if kind == "fp" else f"{kind}_"
        result[f"{prefix}fp16_vs_fp32_cuda"] = compare_outputs(outputs[f"{kind}-fp32"], outputs[f"{kind}-fp16"], head)
        result[f"{prefix}fp32_cuda_vs_cpu"] = compare_outputs(
            outputs[f"{kind}-fp32-cpu"], outputs[f"{kind}-fp32"], head
        )
        if kind != "fp":
            with torch.no_grad():
                fake_quant = model.quantized(head, kind)(torch.from_numpy(x)).numpy()
            result[f"{prefix}fp32_cuda_vs_pytorch"] = compare_outputs(fake_quant, outputs[f"{kind}-fp32"], head)
    return result


def latency(model: SeededModel, device: str = "cuda", batches=(1, 8), runs: int = 50, warmup: int = 10) -> list[dict]:
    """Median session.run time (host arrays in and out, as an application sees it), CUDA, FP16.

    On the dense one2many head, whose exports parity already made (export time is what a
    GPU check cannot spare); one2one adds only a top-300 selection to the same network.
    """
    from yolo_w4.runtime import create_session, input_feed, time_runs

    rows = []
    for batch in batches:
        x = model.batch(batch)
        cases = [("fp", True), ("w4", True), ("w4", False), ("w4g32", True), ("w4g64a", True)]
        for kind, disable in cases:
            session, record = create_session(model.onnx(kind, "fp16", batch, head="one2many"), device, disable)
            feed = input_feed(session, x)
            stats = time_runs(lambda session=session, feed=feed: session.run(None, feed), runs, warmup)
            rows.append(
                {
                    "model": "FP16" if kind == "fp" else f"{LABELS[kind]} FP16",
                    "disable_quant_qdq": disable if kind == "w4" else None,
                    "batch": batch,
                    **stats,
                    "images_per_s": round(batch * 1000 / stats["median_ms"], 1),
                    "provider_used": record["provider_used"],
                }
            )
    return rows


def ptq_on_cuda(arch: str, device: str = "cuda", steps: int | None = None) -> dict:
    """The default build's PTQ on `device`, as the workflow runs it, on a seeded `arch`.

    Each `build` recipe of config.yaml on calibration.max_images photos (the Ultralytics assets
    repeated: the time does not depend on what the photos show), then the data-free fallback's
    distillation (calibration.synthetic; `steps` overrides) for a folder without a spare photo.
    """
    import torch

    from yolo_w4.checkpoint import load_detector, unfused_model, unpickle_checkpoint
    from yolo_w4.config import load_config, recipe_settings
    from yolo_w4.preprocess import load_input
    from yolo_w4.recipe import run_recipe
    from yolo_w4.seeded import asset_images, build_seeded_checkpoint
    from yolo_w4.synthetic import synthesize_images
    from yolo_w4.torch_device import synchronize

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = build_seeded_checkpoint(Path(folder) / "seeded.pt", arch)
        ckpt = unpickle_checkpoint(checkpoint)  # one load: the unfused copy is taken before fusing
        unfused = unfused_model(checkpoint, ckpt=ckpt)
        detector = load_detector(checkpoint, "one2one", 640, ckpt=ckpt)
    config = load_config()
    photos = [torch.from_numpy(load_input(path, 640)[0]) for path in asset_images()]
    count = config["calibration"]["max_images"]
    images = [photos[i % len(photos)] for i in range(count)]
    recipes = {}
    for name in config["build"]:
        settings = {**recipe_settings(config, name), "calibration_source": "images"}  # auto, on a folder with photos
        synchronize(device)
        started = time.perf_counter()
        _, _, records = run_recipe(detector.model, settings, images=images, device=device)
        synchronize(device)
        recipes[name] = {"seconds": round(time.perf_counter() - started, 1), "quantized_convs": len(records or {})}
    synthetic = config["calibration"]["synthetic"]
    steps = steps or synthetic["steps"]
    synchronize(device)
    started = time.perf_counter()
    synthesize_images(
        unfused, count=synthetic["images"], imgsz=640, steps=steps, lr=synthetic["lr"], batch=synthetic["batch"],
        device=device,
    )  # fmt: skip
    synchronize(device)
    return {
        "arch": arch,
        "device": device,
        "calibration_images": count,
        "recipes": recipes,
        "build_seconds": round(sum(r["seconds"] for r in recipes.values()), 1),
        "distillation": {"images": synthetic["images"], "steps": steps, "batch": synthetic["batch"],
                         "seconds": round(time.perf_counter() - started, 1)},
    }  # fmt: skip


def table(result: dict) -> str:
    """The Markdown table README shows."""
    rows = [("what", "measured")]
    facts = result.get("torch", {})
    rows.append(
        (
            "GPU",
            f"{facts.get('device')} (compute {facts.get('capability')}, {facts.get('memory_gib')} GiB, driver {facts.get('driver')})",
        )
    )
    rows.append(("PyTorch", f"{facts.get('torch')}, CUDA {facts.get('torch_cuda_build')}, cuDNN {facts.get('cudnn')}"))
    for key, label in (
        ("ort_with_torch", "ORT CUDA provider, PyTorch imported"),
        ("ort_without_torch", "ORT CUDA provider, no PyTorch"),
    ):
        probe = result.get(key, {})
        rows.append(
            (
                label,
                probe.get("error")
                or f"{probe.get('provider_used')} (onnxruntime {probe.get('onnxruntime')}, preload_dlls {probe.get('preload_dlls')})"
                + (f"; {probe['cuda_reason']}" if probe.get("cuda_reason") else ""),
            )
        )
    demo = result.get("demo_workflow", {})
    if demo:
        rows.append(
            (
                "demo workflow, device: cuda",
                demo.get("error")
                or (
                    f"exit {demo['exit_code']} in {demo['seconds']} s; {len(demo['ort_jobs'])} ORT records, all CUDA: {demo['all_cuda']}; "
                    f"precision {', '.join(p for p in demo['precisions'] if p != 'None')}; distillation on {demo['synthesis_device']}, GPTQ on {demo['quantize_device']}"
                ),
            )
        )
    par = result.get("parity", {})
    comparisons = []
    for kind, name in LABELS.items():
        prefix = "" if kind == "fp" else f"{kind}_"
        comparisons += [(f"{prefix}fp16_vs_fp32_cuda", f"{name}: FP16 vs FP32 (CUDA)"),
                        (f"{prefix}fp32_cuda_vs_cpu", f"{name}: FP32 CUDA vs CPU"),
                        (f"{prefix}fp32_cuda_vs_pytorch", f"{name} FP32 CUDA vs PyTorch fake-quant")]  # fmt: skip
    for key, label in comparisons:
        if key in par:
            p = par[key]
            rows.append(
                (
                    label,
                    f"SQNR {p['sqnr_db'] if p['sqnr_db'] is not None else 'inf (identical)'} dB, max abs diff {p['max_abs_diff'] if p['max_abs_diff'] is not None else float('nan'):.3g}"
                    + (f", rows matched {p['rows_matched']}/{p['rows']}" if "rows" in p else ""),
                )
            )
    if "error" in par:
        rows.append(("parity", par["error"]))
    lat = result.get("latency")
    if isinstance(lat, dict) and "error" in lat:
        rows.append(("latency", lat["error"]))
    elif lat:
        for row in lat:
            flag = "" if row["disable_quant_qdq"] is None else f", disable_quant_qdq={int(row['disable_quant_qdq'])}"
            rows.append(
                (
                    f"latency {row['model']}{flag}, batch {row['batch']}",
                    f"{row['median_ms']} ms median (p90 {row['p90_ms']}), {row['images_per_s']} img/s",
                )
            )
    ptq = result.get("ptq_on_cuda", {})
    where = f"on {ptq.get('device', 'cuda')} (seeded {Path(ptq.get('arch', '')).stem})"
    if "error" in ptq:
        rows.append((f"default build's PTQ {where}", ptq["error"]))
    elif ptq:
        for name, recipe in ptq["recipes"].items():
            rows.append(
                (
                    f"PTQ `{name}` {where}",
                    f"{recipe['seconds']} s on {ptq['calibration_images']} photos ({recipe['quantized_convs']} convs)",
                )
            )
        distilled = ptq["distillation"]
        rows.append((f"data-free fallback's distillation {where}",
                     f"{distilled['images']} images x {distilled['steps']} steps: {distilled['seconds']} s"))  # fmt: skip
    if result.get("export_seconds"):
        rows.append(("exports (CPU, s)", ", ".join(f"{k} {v}" for k, v in result["export_seconds"].items())))
    lines = [f"| {a} | {b} |" for a, b in rows]
    lines.insert(1, "|---|---|")
    return "\n".join(lines)


def _section(result: dict, name: str, function, out: Path, *args):
    started = time.perf_counter()
    print(f"gpu-check: {name} ...", flush=True)
    try:
        result[name] = function(*args)
    except Exception as error:
        traceback.print_exc()
        result[name] = {"error": f"{type(error).__name__}: {error}".strip()[:500]}
    result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo_w4.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu-check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--arch", default="yolov10m.yaml", help="Ultralytics YAML of the seeded model timed")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="sections to skip: demo_workflow parity latency ptq_on_cuda"
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: rehearse every section without a GPU"
    )
    parser.add_argument(
        "--steps", type=int, help="distillation steps timed (default: config calibration.synthetic.steps)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str((out / ".ultralytics").resolve()))

    facts = torch_facts()
    if not facts["cuda_available"] and args.device == "cuda":
        print(
            f"gpu-check: no CUDA GPU visible to PyTorch {facts['torch']} (CUDA build {facts['torch_cuda_build']}); nothing measured"
        )
        return 0
    from yolo_w4.provenance import utc_now, versions

    result = {"torch": facts, "versions": versions(), "created": utc_now(), "arch": args.arch}
    result["device"] = args.device
    _section(result, "ort_with_torch", ort_with_torch, out, args.device)
    _section(result, "ort_without_torch", ort_without_torch, out, args.device)
    with tempfile.TemporaryDirectory() as folder:
        model = None
        if {"parity", "latency"} - set(args.skip):
            started = time.perf_counter()
            try:
                model = SeededModel(args.arch, Path(folder))
            except Exception as error:
                traceback.print_exc()
                result["parity"] = result["latency"] = {"error": f"seeded model: {type(error).__name__}: {error}"}
            result["seeded_model_seconds"] = round(time.perf_counter() - started, 1)
        if model is not None:
            for name, function in (("parity", parity), ("latency", latency)):
                if name not in args.skip:
                    _section(result, name, function, out, model, args.device)
            result["export_seconds"] = model.export_seconds
    if "ptq_on_cuda" not in args.skip:
        _section(result, "ptq_on_cuda", ptq_on_cuda, out, args.arch, args.device, args.steps)
    if "demo_workflow" not in args.skip:  # last: the slowest, and it needs nothing above
        _section(result, "demo_workflow", demo_workflow, out, args.device)
    markdown = table(result)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
