"""ONNX Runtime sessions: provider choice (CUDA first, CPU fallback), precision, timing, prediction.

Rule probe_runtime calls `probe_providers` in the env that runs the models; the module
imports nothing beyond the standard library at load time.
"""

import time
from pathlib import Path

from yolo_w4.errors import UserError
from yolo_w4.threads import get_threads

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def requested_providers(device: str) -> list[str]:
    """What we ask ONNX Runtime for: CUDA first unless the config says cpu."""
    if device not in DEVICES:
        raise UserError(f"device must be one of {DEVICES}, got {device!r} (config key `device`)")
    return [CPU] if device == "cpu" else [CUDA, CPU]


def _tiny_model() -> bytes:
    """A one-node float model (Y = X + X), built in memory: enough to make a provider load."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [value("x", TensorProto.FLOAT, [1, 4])],
        [value("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _cuda_library_error(onnxruntime) -> str | None:
    """Why the CUDA provider library cannot be loaded (the dynamic loader's own words), or None."""
    import ctypes

    library = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.is_file():
        return None  # Windows or another layout: let the session say
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return f"the CUDA provider library cannot load: {error}"
    return None


def preload_cuda_libraries(onnxruntime) -> str | None:
    """Load CUDA, cuDNN and the MSVC runtime from the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]).

    ONNX Runtime's documented way to use the pip-installed CUDA libraries; harmless where
    CUDA is installed system-wide. Returns the error text if preloading failed.
    """
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return None
    try:
        preload()
    except Exception as error:
        return f"onnxruntime.preload_dlls() failed: {error}"
    return None


_PROBES: dict = {}


def session_options(onnxruntime, threads: int | None = None):
    """SessionOptions with `threads` intra-op threads (None: this process's, yolo_w4.threads; 0: ORT's default)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = get_threads() if threads is None else threads
    return options


def probe_providers(device: str = "auto") -> dict:
    """Which provider ONNX Runtime really runs here, and why CUDA was not used when it was asked for.

    `get_available_providers()` lists what is compiled in; only a session created CUDA-first
    shows whether the CUDA libraries and a device are really there. Cached per process.
    """
    requested = requested_providers(device)
    if device in _PROBES:
        return _PROBES[device]
    try:
        import onnxruntime
    except ImportError:
        return {
            "device": device,
            "onnxruntime": None,
            "provider_used": None,
            "cuda_reason": "onnxruntime is not installed",
        }
    available = onnxruntime.get_available_providers()
    record = {
        "device": device,
        "onnxruntime": onnxruntime.__version__,
        "providers_compiled_in": available,
        "preload_dlls": None,
        "provider_used": CPU,
        "cuda_reason": None,
    }
    if device == "cpu":
        record["cuda_reason"] = "device: cpu"
    elif CUDA not in available:
        record["cuda_reason"] = f"onnxruntime {onnxruntime.__version__} has no CUDA provider (install onnxruntime-gpu)"
    else:
        record["preload_dlls"] = preload_cuda_libraries(onnxruntime) or "ok"
        options = session_options(onnxruntime)
        options.log_severity_level = 4
        session = onnxruntime.InferenceSession(_tiny_model(), options, providers=requested)
        record["provider_used"] = session.get_providers()[0]
        if record["provider_used"] != CUDA:
            record["cuda_reason"] = _cuda_library_error(onnxruntime) or (
                "the CUDA provider loaded but no session could use it (no CUDA device visible, or a driver older than "
                "the CUDA this onnxruntime-gpu was built for)"
            )
    _PROBES[device] = record
    return record


def resolve_precision(precision: str, device: str, probe: dict | None = None) -> str:
    """`auto` means FP16 where ONNX Runtime really runs CUDA (a probe says), FP32 otherwise."""
    if precision in ("fp32", "fp16"):
        return precision
    if precision != "auto":
        raise UserError(f"precision must be auto, fp32 or fp16, got {precision!r} (config key `precision`)")
    if device == "cpu":
        return "fp32"
    probe = probe or probe_providers(device)
    return "fp16" if probe["provider_used"] == CUDA else "fp32"


def create_session(path, device: str = "auto", disable_quant_qdq: bool = True, threads: int | None = None):
    """An InferenceSession plus a record of the providers requested, available and used, and its threads.

    `session.disable_quant_qdq=1` stops ORT from fusing Q/DQ pairs into integer kernels and
    lets it constant-fold each weight's DequantizeLinear once, instead of re-running it on
    every inference: activations stay float, as W4A16 intends. When CUDA was asked for and
    not used, the record says why. threads: intra-op threads (None: this process's).
    """
    import onnxruntime

    requested = requested_providers(device)
    probe = probe_providers(device)
    if device == "cuda" and probe["provider_used"] != CUDA:
        raise UserError(
            f"device: cuda, but ONNX Runtime cannot use CUDA here: {probe['cuda_reason']}; set device: auto or cpu"
        )
    available = onnxruntime.get_available_providers()
    options = session_options(onnxruntime, threads)
    options.add_session_config_entry("session.disable_quant_qdq", "1" if disable_quant_qdq else "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = [p for p in requested if p in available and (p != CUDA or probe["provider_used"] == CUDA)]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers or [CPU])
    used = session.get_providers()
    if device == "cuda" and used[0] != CUDA:
        raise UserError(
            f"device: cuda, but ONNX Runtime did not run {path} on CUDA (providers used: {', '.join(used)})"
        )
    record = {
        "providers_requested": requested,
        "providers_available": available,
        "providers_used": used,
        "provider_used": used[0],
        "cuda_reason": probe["cuda_reason"] if used[0] != CUDA else None,
        "disable_quant_qdq": disable_quant_qdq,
        "intra_op_num_threads": options.intra_op_num_threads,  # 0: ONNX Runtime's default, one per core
    }
    return session, record


def input_feed(session, tensor) -> dict:
    """{input name: tensor} cast to the dtype the model declares (float16 or float32)."""
    import numpy as np

    spec = session.get_inputs()[0]
    dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
    return {spec.name: tensor.astype(dtype, copy=False)}


def io_record(session) -> dict:
    def describe(values):
        return [{"name": v.name, "shape": list(v.shape), "type": v.type} for v in values]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def time_runs(run, runs: int = 20, warmup: int = 3) -> dict:
    """Median and p90 wall time of `run()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return latency_stats(times, warmup)


def latency_stats(times_ms, warmup: int = 0) -> dict:
    import numpy as np

    times = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
        "runs": int(times.size),
        "warmup": warmup,
    }


def predict_images(
    session,
    images: list[Path],
    head: str,
    imgsz: int,
    conf: float,
    iou: float,
    max_det: int,
    multi_label=True,
    sizes: list | None = None,
):
    """Detections per image and the model-only latency (ms) of each, with a progress bar.

    sizes: each image's (height, width) as its annotation states it; a photo of another size is refused.

    The next image is read and letterboxed on a second thread while the model runs (ONNX Runtime
    releases the GIL), so decoding costs the evaluation no wall time beside the model's own.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from yolo_w4.decode import decode
    from yolo_w4.preprocess import load_input

    detections, latencies = [], []
    with ThreadPoolExecutor(max_workers=1) as reader:
        sizes = sizes or [None] * len(images)
        upcoming = [reader.submit(load_input, images[0], imgsz, expected_hw=sizes[0])] if images else []
        for index in tqdm(range(len(images)), desc="images", unit="img", mininterval=2.0):
            tensor, mapping = upcoming.pop(0).result()
            if index + 1 < len(images):
                upcoming.append(reader.submit(load_input, images[index + 1], imgsz, expected_hw=sizes[index + 1]))
            feed = input_feed(session, tensor)
            outputs = []
            timing = time_runs(
                lambda feed=feed, outputs=outputs: outputs.append(session.run(None, feed)[0]), runs=1, warmup=0
            )
            latencies.append(timing["median_ms"])
            detections.append(decode(outputs[-1], head, mapping, conf, iou, max_det, multi_label))
    return detections, latencies
