"""Threads (issue #14): each rule's threads and cluster resources, and the threads reaching PyTorch,
ONNX Runtime and the JSONs in a real local run (the SLURM run: tests/test_slurm.py)."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, snakemake_jobs

pytestmark = pytest.mark.workflow

COMPUTE = {"synthesize_calibration", "layer_sensitivity", "quantize_weights", "evaluate_coco"}
TIMING = {"smoke_test", "benchmark_latency"}  # hold every core of a local run
GPU_RULES = COMPUTE | TIMING | {"probe_runtime"}  # probe_runtime must see the GPU the models will run on


def snakemake(tmp_path, config: dict, *args, cores: int = 2):
    path = tmp_path / "threads.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--cores", cores, *args, "--configfile", "config/demo.yaml", path]
    return subprocess.run([*map(str, command)], cwd=ROOT, capture_output=True, text=True, timeout=1200)


def plan(tmp_path, cores: int = 3, **config) -> list[dict]:
    """The jobs a forced dry run of the demo (every recipe kind: synthetic, calibrated, mixed, plain) would run."""
    config = {
        "run_id": "pytest-threads-plan",
        "build": ["w4a16_datafree", "w4a16", "w4a16_rtn", "w4a16_mixed_up"],
        **config,
    }
    config.setdefault(
        "calibration", {"images": str(tmp_path), "annotations": "config/demo/annotations.json"}
    )  # not read
    result = snakemake(tmp_path, config, "--dry-run", "--forceall", cores=cores)
    assert result.returncode == 0, result.stderr[-3000:]
    return list(snakemake_jobs(result.stdout + result.stderr).values())


def test_threads_per_rule_and_cpus_per_task(tmp_path):
    """Small jobs 1, compute jobs config `threads` (capped at --cores), timing jobs every core; cpus_per_task = threads."""
    jobs = plan(tmp_path, cores=3, threads=2)
    rules = {job["rule"] for job in jobs}
    assert rules >= COMPUTE | TIMING
    for job in jobs:
        if job["rule"] == "all":
            continue
        expected = 3 if job["rule"] in TIMING else 2 if job["rule"] in COMPUTE else 1
        assert job["threads"] == expected, job
        assert int(job["resources"]["cpus_per_task"]) == expected, job
        assert int(job["resources"]["mem_mb"]) >= 1000 and int(job["resources"]["runtime"]) >= 10, job
        assert "gpu" not in job["resources"], "device auto without cluster.gpu asks for no GPU"
    assert {job["threads"] for job in plan(tmp_path, cores=1, threads=8)} == {1}, "capped at --cores"


@pytest.mark.parametrize(
    ("device", "cluster", "gpu"),
    [
        ("cuda", {"gpu": False, "gpu_model": "h200"}, True),
        ("auto", {"gpu": True, "gpu_model": None}, True),
        ("auto", {"gpu": False, "gpu_model": "h200"}, False),
        ("cpu", {"gpu": True, "gpu_model": "h200"}, False),
    ],
)
def test_gpu_requests_follow_device_and_cluster_gpu(tmp_path, device, cluster, gpu):
    for job in plan(tmp_path, device=device, cluster=cluster):
        calibrated = job["rule"] == "quantize_weights" and "w4a16_rtn" not in job["wildcards"]
        wants = gpu and job["rule"] in GPU_RULES and (job["rule"] != "quantize_weights" or calibrated)
        assert job["resources"].get("gpu", "0") == ("1" if wants else "0"), job
        model = job["resources"].get("gpu_model") or None
        assert model == (cluster["gpu_model"] if wants else None), job


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The demo's jobs that compute, --cores 2 and `threads: 1`: (results folder, log)."""
    tmp_path = tmp_path_factory.mktemp("threads")
    run_id = "pytest-threads"
    results = ROOT / "results" / run_id
    shutil.rmtree(results, ignore_errors=True)
    config = {
        "run_id": run_id,
        "threads": 1,
        "build": ["w4a16_rtn"],
        "smoke": {"runs": 2, "warmup": 1},
        "latency": {"images": 1, "rounds": 2},
    }
    targets = [
        f"results/{run_id}/smoke/yolov10n-seed0-w4a16_rtn.json",
        f"results/{run_id}/metrics/yolov10n-seed0-fp.json",
        f"results/{run_id}/latency/yolov10n-seed0.json",
    ]
    result = snakemake(tmp_path, config, *targets, cores=2)
    assert result.returncode == 0, result.stderr[-3000:]
    yield results, result.stderr
    shutil.rmtree(results, ignore_errors=True)


def test_threads_reach_pytorch_onnxruntime_and_the_jsons(local_run):
    """threads: 1 on a 2-core run: PyTorch's default here would be 2, ONNX Runtime's one per core."""
    import torch

    results, _ = local_run
    smoke = json.loads((results / "smoke" / "yolov10n-seed0-w4a16_rtn.json").read_text())
    assert smoke["threads"] == {"onnxruntime_intra_op": 1, "torch": 1}, "a timing job computes with `threads`"
    assert smoke["intra_op_num_threads"] == 1
    metrics = json.loads((results / "metrics" / "yolov10n-seed0-fp.json").read_text())
    assert metrics["intra_op_num_threads"] == 1
    latency = json.loads((results / "latency" / "yolov10n-seed0.json").read_text())
    assert latency["intra_op_num_threads"] == 1 and {m["intra_op_num_threads"] for m in latency["models"].values()} == {
        1
    }
    saved = torch.load(results / "quantized" / "yolov10n-seed0-w4a16_rtn-ptq.pt", weights_only=True)
    assert saved["settings"]["threads"] == 1
    first = (results / "logs" / "smoke_test" / "yolov10n-seed0-w4a16_rtn.log").read_text().splitlines()[0]
    assert first.startswith("threads: {'onnxruntime_intra_op': 1, 'torch': 1") and first.endswith(
        "(Snakemake job threads: 2)"
    )


def test_timing_jobs_ran_alone(local_run):
    """With --cores 2, no job started while smoke_test or benchmark_latency ran, nor ran when they started."""
    _, log = local_run
    rules = {jobid: job["rule"] for jobid, job in snakemake_jobs(log).items()}
    running, timed = set(), 0
    for match in re.finditer(
        r"^(?:local)?rule \w+:\n(?:    .*\n)*?    jobid: (\d+)$|^Finished jobid: (\d+)", log, re.M
    ):
        started, finished = match.groups()
        if finished:
            running.discard(int(finished))
            continue
        job = int(started)
        others = {rules[j] for j in running}
        assert not (others & TIMING), f"{rules[job]} started while {others} ran"
        if rules[job] in TIMING:
            assert not running, f"{rules[job]} started beside {others}"
            timed += 1
        running.add(job)
    assert timed == 2, "smoke_test and benchmark_latency ran"
