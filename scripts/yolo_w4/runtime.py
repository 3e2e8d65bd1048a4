"""ONNX Runtime sessions: provider choice (CUDA first, CPU fallback), precision, timing.

The Snakefile imports `resolve_precision` from here, so the module imports nothing beyond
the standard library at load time (Snakemake's own env need not have NumPy).
"""

import time

from yolo_w4.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def requested_providers(device: str) -> list[str]:
    """What we ask ONNX Runtime for: CUDA first unless the config says cpu."""
    if device not in DEVICES:
        raise UserError(f"device must be one of {DEVICES}, got {device!r} (config key `device`)")
    return [CPU] if device == "cpu" else [CUDA, CPU]


def resolve_precision(precision: str, device: str) -> str:
    """`auto` means FP16 where ONNX Runtime can run CUDA, FP32 on the CPU."""
    if precision in ("fp32", "fp16"):
        return precision
    if precision != "auto":
        raise UserError(f"precision must be auto, fp32 or fp16, got {precision!r} (config key `precision`)")
    return "fp16" if device != "cpu" and CUDA in available_providers() else "fp32"


def create_session(path, device: str = "auto"):
    """An InferenceSession plus a record of the providers requested, available and used.

    `session.disable_quant_qdq=1` stops ORT from fusing Q/DQ pairs into integer kernels and
    lets it constant-fold each weight's DequantizeLinear once, instead of re-running it on
    every inference: activations stay float, as W4A16 intends.
    """
    import onnxruntime

    requested = requested_providers(device)
    available = onnxruntime.get_available_providers()
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        str(path), options, providers=[p for p in requested if p in available] or [CPU]
    )
    used = session.get_providers()
    if device == "cuda" and used[0] != CUDA:
        raise UserError(
            f"device: cuda, but ONNX Runtime cannot use CUDA here (available: {', '.join(available)}); "
            "install onnxruntime-gpu with a matching CUDA, or set device: auto"
        )
    record = {
        "providers_requested": requested,
        "providers_available": available,
        "providers_used": used,
        "provider_used": used[0],
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
