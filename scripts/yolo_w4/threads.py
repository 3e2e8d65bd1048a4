"""The threads this process computes with: set once per job, read wherever a thread pool is made.

rule_runner sets a Snakemake job's threads here before its step runs; `yolo_w4.runtime` gives every
ONNX Runtime session that many intra-op threads. Standard library only: every env imports it.
"""

import os
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

_THREADS = 0  # 0: unset, each library's default (ONNX Runtime: one thread per core)


def set_threads(threads: int) -> dict:
    """Compute with `threads` threads from now on: PyTorch's intra-op pool and OpenCV (where the step's
    modules already loaded them: nothing new is imported), the ONNX Runtime sessions created afterwards,
    and the OpenMP/BLAS pools of libraries loaded later. Returns the threads each one now uses."""
    global _THREADS
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _THREADS = threads
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    applied = {"onnxruntime_intra_op": threads}
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
        applied["torch"] = torch.get_num_threads()
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(threads)
        applied["opencv"] = cv2.getNumThreads()
    return applied


def get_threads() -> int:
    """The threads set for this process; 0 where none were (the command line): libraries' defaults."""
    return _THREADS
