# Threads and cluster resources of every rule (README "Running on a cluster"). Nothing here runs a job.
#
# threads: small jobs 1; the PyTorch / ONNX Runtime compute rules config `threads`, which Snakemake
# caps at --cores locally and a cluster executor submits as the job's cpus_per_task. rule_runner hands
# a job's threads to torch.set_num_threads and ONNX Runtime's intra_op_num_threads.
#
# mem_mb and runtime (minutes): sized from peaks measured on a seeded YOLOv10m at imgsz 640 on CPU
# (max_rss in results/<run_id>/benchmarks/*.tsv; 2 shared cores): distilling 8 images 9.6 GB; GPTQ
# on them 1.6 GB, on 16 real images with compensate_upstream 2.3 GB (~11 GB at config.yaml's 128);
# sensitivity 0.9 GB; export 1.1 GB; smoke test 1.3 GB; latency 0.9 GB; evaluation 0.4 GB; times
# scaled to config.yaml's image counts and steps, with headroom. Each retry (--retries, set in
# profiles/slurm) asks for that much again: attempt 2 twice the memory and time.

from yolo_w4.config import calibrated  # noqa: E402

THREADS = config["threads"]
CLUSTER = config["cluster"]
# One GPU per PyTorch / ONNX Runtime compute job where the config wants CUDA: device cuda, or device
# auto with cluster.gpu (the submitting host cannot see the compute nodes' GPUs). Never for device cpu.
GPU_JOBS = config["device"] == "cuda" or (config["device"] == "auto" and CLUSTER["gpu"])


def timing_threads(wildcards):
    """Threads of the timing rules (smoke_test, benchmark_latency): every core of a local run, so no
    other job runs beside the timing; `threads` on a cluster, where the job has CPUs of its own. They
    compute with `threads` either way (their scripts cap it), so timings compare across machines."""
    if workflow.remote_exec or workflow.non_local_exec:
        return THREADS
    return workflow.resource_settings.cores or THREADS


def job_resources(mem_mb, runtime, gpu=False):
    """A rule's resources: mem_mb and runtime (minutes), times the attempt; cpus_per_task = the job's
    threads; and where `gpu` (True, or a function of the wildcards) and GPU_JOBS: gpu=1, plus
    gpu_model = cluster.gpu_model when set (the slurm executor submits --gpus=MODEL:1)."""
    declared = {
        "mem_mb": lambda wildcards, attempt: mem_mb * attempt,
        "runtime": lambda wildcards, attempt: runtime * attempt,
        "cpus_per_task": lambda wildcards, threads: threads,
    }
    if gpu and GPU_JOBS:
        wants = gpu if callable(gpu) else (lambda wildcards: True)
        declared["gpu"] = lambda wildcards: int(wants(wildcards))
        if CLUSTER["gpu_model"]:
            declared["gpu_model"] = lambda wildcards: CLUSTER["gpu_model"] if wants(wildcards) else ""
    return declared


def calibrated_variant(wildcards):
    """Whether quantize_weights runs calibrated PTQ (GPTQ, AdaRound, ...) for this variant: the part a GPU speeds up."""
    return calibrated(RECIPES[wildcards.variant])
