"""The workflow on a real SLURM cluster, through `--workflow-profile profiles/slurm` (`make test-slurm`).

A one-node cluster on 127.0.0.1 from Debian's slurm-wlm and munge (installed with apt-get where they
are missing): munged, slurmctld and slurmd started as root, their state, logs and pid files in a temp
folder, stopped when the module ends. Its slurm.conf goes to /etc/slurm/slurm.conf (and is removed
afterwards), the one path every SLURM command finds without SLURM_CONF: the executor's jobstep drops
SLURM_* variables before it calls `srun` inside each job. The seeded demo workflow (w4a16_rtn) runs
with every job submitted by sbatch, and each job must have been a SLURM job that completed with the
CPUs, memory and time its rule declares. Skipped, saying why, where the packages cannot be installed
or the daemons cannot start (under CI=true a daemon that cannot start fails the test); never faked.

Accounting without slurmdbd (which needs a MySQL server): `sacct` alone answers "Slurm accounting
storage is disabled", so this cluster records every finished job with JobCompType=jobcomp/filetxt,
which `sacct --completion` reads. The executor polls with `squeue` (--slurm-status-command squeue;
MinJobAge keeps finished jobs in slurmctld for 10 minutes), and `scontrol show job` gives each job's
comment (its rule), CPUs, memory and time limit.
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, snakemake_jobs

pytestmark = pytest.mark.slurm

SLURM_CONF = Path("/etc/slurm/slurm.conf")
LOCK = Path("/tmp/yolo-w4-test-slurm.lock")  # one test cluster at a time on a machine (the conf path, the ports)
MARKER = "# Written by yolo-w4 tests/test_slurm.py for a one-node test cluster; removed when the test ends."
PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct")
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PORTS = {"SlurmctldPort": 16817, "SlurmdPort": 16818}  # not 6817/6818: a real cluster's daemons may hold those
RUN_ID = "pytest-slurm"
COMPUTE_RULES = {"quantize_weights", "smoke_test", "evaluate_coco", "benchmark_latency"}  # those this run has


def command(*args, timeout=120, check=False, **kwargs):
    env = {**os.environ, "PATH": PATH, **kwargs.pop("env", {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check, env=env, **kwargs)


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def refuse(message: str, installable: bool = True):
    """Skip with the reason; under CI=true a cluster that was installed but does not start fails instead."""
    if installable and os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def install_slurm() -> None:
    missing = [p for p in PROGRAMS if not shutil.which(p, path=PATH)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get", path=PATH):
        refuse(f"SLURM is not installed ({', '.join(missing)} missing) and apt-get cannot run here", False)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = command(*install, timeout=1200, env=env)
    if result.returncode != 0:  # a stale package list: update once, then try again
        command("apt-get", "update", timeout=600, env=env)
        result = command(*install, timeout=1200, env=env)
    missing = [p for p in PROGRAMS if not shutil.which(p, path=PATH)]
    if missing:
        refuse(
            f"apt-get install {' '.join(PACKAGES)} failed ({', '.join(missing)} missing): {tail(result.stderr)}", False
        )


def slurm_conf(folder: Path, cpus: int, memory_mb: int) -> str:
    settings = {
        "ClusterName": "yolow4test",
        "SlurmctldHost": "localhost(127.0.0.1)",
        **PORTS,
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={folder / 'munge' / 'munge.socket'}",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": folder / "state",
        "SlurmdSpoolDir": folder / "spool",
        "SlurmctldPidFile": folder / "slurmctld.pid",
        "SlurmdPidFile": folder / "slurmd.pid",
        "SlurmctldLogFile": folder / "slurmctld.log",
        "SlurmdLogFile": folder / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "SchedulerType": "sched/backfill",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "JobAcctGatherType": "jobacct_gather/linux",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": folder / "jobcomp.log",
        "MinJobAge": 600,
    }
    lines = [MARKER, *(f"{key}={value}" for key, value in settings.items())]
    lines += [
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def stop(pid_file: Path) -> None:
    """End the daemon we started (by the pid it wrote), politely first."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 2)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    """A running one-node SLURM cluster: {"cpus", "memory_mb", "folder"}; everything stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs, and this test runs as a regular user")
    install_slurm()
    lock = LOCK.open("w")
    deadline = time.monotonic() + 1800
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.skip("another test SLURM cluster has run on this machine for 30 minutes; not starting a second")
            time.sleep(5)
    request.addfinalizer(lock.close)  # closing the file releases the lock, after the teardown below
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(MARKER):
        pytest.skip(f"{SLURM_CONF} exists (a real SLURM setup); this test will not replace it")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(mode=0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cpus = os.cpu_count()
    memory_mb = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) // 1024
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf(folder, cpus, memory_mb))
    munge = folder / "munge"
    pid_files = [folder / "slurmd.pid", folder / "slurmctld.pid", munge / "munged.pid"]
    try:
        starts = [
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            ["slurmctld", "-f", str(SLURM_CONF)],
            ["slurmd", "-f", str(SLURM_CONF), "-N", "localhost"],
        ]
        for start in starts:
            result = command(*start, timeout=60)
            if result.returncode != 0:
                refuse(f"{start[0]} did not start (exit {result.returncode}): {tail(result.stderr + result.stdout)}")
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = command("sinfo", "--noheader", "--format=%T", "--nodes=localhost").stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            logs = " / ".join(
                f"{name}: {tail(path.read_text(), 3)}"
                for name, path in (("slurmctld", folder / "slurmctld.log"), ("slurmd", folder / "slurmd.log"))
                if path.exists()
            )
            refuse(f"the SLURM node did not become idle in 60 s (state {state or 'unknown'!r}): {logs}")
        yield {"cpus": cpus, "memory_mb": memory_mb, "folder": folder}
    finally:
        jobs = command("squeue", "--noheader", "--format=%i").stdout.split() if SLURM_CONF.exists() else []
        if jobs:
            command("scancel", *jobs)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and command("squeue", "--noheader", "--format=%i").stdout.strip():
                time.sleep(1)
        for pid_file in pid_files:
            stop(pid_file)
        if SLURM_CONF.exists() and SLURM_CONF.read_text().startswith(MARKER):
            SLURM_CONF.unlink()


def scontrol_job(job_id: str) -> dict:
    text = command("scontrol", "--oneliner", "show", "job", job_id).stdout
    return dict(re.findall(r"(\w[\w:/]*)=(\S*)", text))


def minutes(limit: str) -> int:
    """SLURM's [days-]hours:minutes:seconds as minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The seeded demo workflow, w4a16_rtn only, every job through sbatch: (results, config, log, submitted)."""
    tmp_path = tmp_path_factory.mktemp("slurm-run")
    threads = min(2, cluster["cpus"])
    config = {
        "run_id": RUN_ID,
        "threads": threads,
        "build": ["w4a16_rtn"],
        "smoke": {"runs": 2, "warmup": 1},
        "latency": {"images": 1, "rounds": 2},
        "bootstrap": {"resamples": 20},
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    snakemake = [
        *(sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm"),
        *("--configfile", "config/demo.yaml", str(config_file)),
        *("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"),
        *("--slurm-no-account", "--slurm-keep-successful-logs", "--slurm-logdir", str(tmp_path / "slurm-logs")),
    ]
    env = {"YOLO_OFFLINE": "1"}
    results = ROOT / "results" / RUN_ID
    shutil.rmtree(results, ignore_errors=True)
    plan = command(*snakemake, "--dry-run", cwd=ROOT, env=env, timeout=300)
    assert plan.returncode == 0, tail(plan.stderr, 20)
    planned = snakemake_jobs(plan.stdout + plan.stderr)
    # A job that asks for more memory than this node has would wait forever: give it what the node has
    # (the jobs of this small model need far less than the YOLOv10m sizes the rules declare).
    budget = cluster["memory_mb"] * 9 // 10
    too_big = sorted({job["rule"] for job in planned.values() if int(job["resources"].get("mem_mb", 0)) > budget})
    overrides = [f"{rule}:mem_mb={budget}" for rule in too_big]
    started = time.monotonic()
    result = command(
        *snakemake, *(["--set-resources", *overrides] if overrides else []), cwd=ROOT, env=env, timeout=1800
    )
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    assert result.returncode == 0, tail(log, 40)
    submitted = {
        int(jobid): (slurm_id, path)
        for jobid, slurm_id, path in re.findall(
            r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)", log
        )
    }
    print(f"\nSLURM run: {len(submitted)} jobs in {seconds:.0f} s; memory overrides: {overrides or 'none'}")
    yield {
        "results": results,
        "config": config,
        "log": log,
        "planned": planned,
        "jobs": snakemake_jobs(log),
        "submitted": submitted,
        "overrides": dict(o.split(":mem_mb=") for o in overrides),
    }
    shutil.rmtree(results, ignore_errors=True)


def test_every_job_ran_as_a_slurm_job(slurm_run):
    jobs, submitted = slurm_run["jobs"], slurm_run["submitted"]
    remote = {jobid: job for jobid, job in jobs.items() if not job["local"]}
    assert {job["rule"] for job in jobs.values() if job["local"]} <= {"all"}, "only the target rule runs locally"
    planned = Counter(job["rule"] for job in slurm_run["planned"].values() if job["rule"] != "all")
    assert Counter(job["rule"] for job in remote.values()) == planned, "every planned job ran"
    assert set(remote) == set(submitted), "each job Snakemake ran was submitted with sbatch"
    assert {"quantize_weights", "export_qcdq", "smoke_test", "evaluate_coco", "benchmark_latency"} <= set(planned)
    completion = command(
        "sacct", "--completion", "--parsable2", "--noheader", "--format=JobID,JobName,State,AllocCPUS,NodeList"
    )
    assert completion.returncode == 0, completion.stderr
    rows = {row.split("|")[0]: row.split("|") for row in completion.stdout.splitlines()}
    print("sacct --completion (jobcomp/filetxt):\n" + completion.stdout)
    names = set()
    for jobid, (slurm_id, _) in submitted.items():
        assert slurm_id in rows, f"SLURM job {slurm_id} ({remote[jobid]['rule']}) is not in the job completion log"
        _, name, state, cpus, node = rows[slurm_id]
        assert (state, node) == ("COMPLETED", "localhost"), rows[slurm_id]
        assert int(cpus) == remote[jobid]["threads"], (remote[jobid]["rule"], rows[slurm_id])
        names.add(name)
    assert len(names) == 1, "every job carries this run's id as its SLURM job name"
    squeue = command("squeue", "--states=all", "--noheader", "--format=%i|%j|%T", f"--name={names.pop()}")
    assert {line.split("|")[0] for line in squeue.stdout.split()} == {s for s, _ in submitted.values()}


def test_slurm_jobs_got_the_cpus_memory_and_time_their_rules_declare(slurm_run):
    threads = slurm_run["config"]["threads"]
    for jobid, (slurm_id, log_path) in slurm_run["submitted"].items():
        job = slurm_run["jobs"][jobid]
        described = scontrol_job(slurm_id)
        assert described["JobState"] == "COMPLETED", described
        assert described["Comment"].startswith(f"rule_{job['rule']}"), described["Comment"]
        assert int(described["NumCPUs"]) == job["threads"] == int(job["resources"]["cpus_per_task"])
        assert job["threads"] == (threads if job["rule"] in COMPUTE_RULES else 1), job
        mem_mb = slurm_run["overrides"].get(job["rule"], job["resources"]["mem_mb"])
        assert described["MinMemoryNode"] == f"{mem_mb}M", (job["rule"], described["MinMemoryNode"], mem_mb)
        assert minutes(described["TimeLimit"]) == int(job["resources"]["runtime"]), (job["rule"], described)
        assert "gpu" not in described.get("TRES", ""), "device auto without cluster.gpu asks for no GPU"
        assert f"/rule_{job['rule']}/" in log_path and Path(log_path).is_file(), log_path
        print(
            f"SLURM job {slurm_id}: {described['Comment']} {described['JobState']} NumCPUs={described['NumCPUs']} "
            f"MinMemoryNode={described['MinMemoryNode']} TimeLimit={described['TimeLimit']}"
        )


def test_threads_reach_the_libraries_inside_slurm_jobs(slurm_run):
    """config `threads` became each compute job's CPUs, then PyTorch's and ONNX Runtime's threads; device
    auto in a CPU-only job recorded CPU."""
    import torch

    results, threads = slurm_run["results"], slurm_run["config"]["threads"]
    model = "yolov10n-seed0"
    for variant in ("fp", "w4a16_rtn"):
        smoke = json.loads((results / "smoke" / f"{model}-{variant}.json").read_text())
        assert smoke["threads"] == {"onnxruntime_intra_op": threads, "torch": threads}
        assert smoke["provider_used"] == "CPUExecutionProvider"
        metrics = json.loads((results / "metrics" / f"{model}-{variant}.json").read_text())
        assert metrics["intra_op_num_threads"] == threads and metrics["provider_used"] == "CPUExecutionProvider"
    latency = json.loads((results / "latency" / f"{model}.json").read_text())
    assert latency["intra_op_num_threads"] == threads
    assert {m["intra_op_num_threads"] for m in latency["models"].values()} == {threads}
    saved = torch.load(results / "quantized" / f"{model}-w4a16_rtn-ptq.pt", weights_only=True)
    assert saved["settings"]["threads"] == threads and saved["settings"]["device"] == "cpu"
