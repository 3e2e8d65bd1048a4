"""Latency of several ONNX models measured in one process, interleaved.

Timing models in separate jobs lets machine load, CPU frequency and cache state differ
between them; here every round runs each model once on the same input, in rotating order,
so each ratio to the FP baseline compares like with like.
"""

import time

import numpy as np

from yolo_w4.preprocess import load_input
from yolo_w4.runtime import create_session, input_feed, latency_stats


def interleaved_latency(
    models: dict, images: list, device: str = "auto", rounds: int = 10, warmup: int = 2, imgsz: int = 640
) -> dict:
    """{name: latency stats} plus each model's median ratio to the first model (the baseline)."""
    sessions = {name: create_session(path, device) for name, path in models.items()}
    tensors = [load_input(path, imgsz)[0] for path in images]
    feeds = {name: [input_feed(session, t) for t in tensors] for name, (session, _) in sessions.items()}
    names = list(models)
    times = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            session = sessions[name][0]
            for feed in feeds[name]:
                start = time.perf_counter()
                session.run(None, feed)
                if round_index >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    baseline = names[0]
    base_median = float(np.median(times[baseline]))
    return {
        "baseline": baseline,
        "models": {
            name: {
                **latency_stats(times[name], warmup),
                "ratio_to_baseline": round(float(np.median(times[name])) / base_median, 4),
                **sessions[name][1],
            }
            for name in names
        },
        "rounds": rounds,
        "intra_op_num_threads": sessions[baseline][1]["intra_op_num_threads"],  # every session's (0: ORT's default)
        "images": [str(p) for p in images],
        "method": "interleaved: each round runs every model once per image, order rotated each round",
    }
