"""Each small conda env, proven the nearest real way: a venv of exactly its pip lines runs its rules.

Conda cannot run here. For envs/onnxruntime.yaml and envs/report.yaml this builds a real venv
(`python -m venv` with this Python 3.11, then pip at the env's `pip=` major and exactly the
env's pip lines, read from the YAML), checks PyTorch is absent from it, and runs the rule
scripts (scripts/*.py, through yolo_w4.rule_runner, as Snakemake's `script:` would) of every
rule that declares that env, on real COCO val2017 images and on ONNX models exported once
with the project venv (which has PyTorch): a seeded YOLOv10n in FP32 and as W4 QCDQ.

Exception, deliberately: envs/onnxruntime.yaml pins `onnxruntime-gpu[cuda,cudnn]==1.31.1`.
The [cuda,cudnn] extras pull ~2 GB of NVIDIA CUDA 13 wheels that this CPU machine cannot use,
so the venv gets `onnxruntime-gpu==1.31.1` without the extras (the same onnxruntime-gpu build,
whose CUDA provider then reports why it cannot run). That the extras resolve is proven by
tests/test_envs.py::test_env_pip_section_resolves_from_the_registry. Every other line is
installed exactly as pinned.

Skipped (with the reason) only when the package registry cannot be reached and CI is not
"true"; under CI=true an unreachable registry or missing data fails instead.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, VAL_ANNOTATIONS, VAL_IMAGES, shared

CI = os.environ.get("CI") == "true"
TRAIN_IMAGES = ("coco2017", "source-data", "train2017")  # the calibration pool, as config/accuracy-yolov5n.yaml
TRAIN_ANNOTATIONS = ("coco2017", "source-data", "annotations", "instances_train2017.json")
IMGSZ = 320
MAX_IMAGES = 3
W4 = "w4a16_rtn"
PROJECT_PYTHON = Path(sys.executable)  # the project venv: PyTorch, Brevitas, Ultralytics
EXTRAS_DROPPED = {"onnxruntime-gpu[cuda,cudnn]": "onnxruntime-gpu"}  # see the module docstring


def env_spec(env: str) -> tuple[str, list[str]]:
    """(pip's conda pin as a pip specifier, the env's pip lines), read from envs/<env>."""
    dependencies = yaml.safe_load((ROOT / "envs" / env).read_text())["dependencies"]
    conda = [d for d in dependencies if isinstance(d, str)]
    pip = next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)
    pip_pin = next(d for d in conda if d.startswith("pip="))  # e.g. pip=26.*
    python_pin = next(d for d in conda if d.startswith("python="))
    assert python_pin == f"python={sys.version_info.major}.{sys.version_info.minor}", (
        f"{env}: {python_pin}, venv from {sys.version}"
    )
    return "pip==" + pip_pin.split("=", 1)[1], list(pip)


def install_lines(lines: list[str]) -> list[str]:
    """The env's pip lines, the onnxruntime-gpu CUDA extras dropped (nothing else changed)."""
    out = []
    for line in lines:
        package, version = line.split("==")
        out.append(f"{EXTRAS_DROPPED.get(package, package)}=={version}")
    return out


def rules_using(env: str) -> dict[str, str]:
    """{rule name: its script} for every rule in rules/*.smk whose conda: is envs/<env>."""
    found = {}
    for rules in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"(?m)^rule ", rules.read_text())[1:]:
            conda = re.search(r'conda:\s*\n\s*"\.\./envs/([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"\.\./(scripts/[^"]+)"', block)
            if conda and conda.group(1) == env and script:
                found[block.split(":", 1)[0].strip()] = script.group(1)
    return found


def registry_reachable(tmp: Path) -> tuple[bool, str]:
    """Can pip fetch a small pinned distribution of these envs (no install)?"""
    _, lines = env_spec("report.yaml")
    pyyaml = next(line for line in lines if line.lower().startswith("pyyaml=="))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(tmp), pyyaml],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return done.returncode == 0, done.stderr.strip()[-500:]


@pytest.fixture(scope="module", autouse=True)
def registry(tmp_path_factory):
    """Marks the whole module: skip with the reason where no registry is reachable, fail under CI=true."""
    reachable, why = registry_reachable(tmp_path_factory.mktemp("registry-probe"))
    if not reachable:
        message = f"the package registry cannot be reached, so the env venvs cannot be built: {why}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)


def start_venv(env: str, where: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start building the venv in the background: (process, venv, its log)."""
    pip_pin, lines = env_spec(env)
    venv = where / "venv"
    python = venv / "bin" / "python"
    log = where / "build.log"
    # pip's cache is left on (its default), so reruns reuse the downloaded wheels.
    script = " && ".join(
        [
            f"{sys.executable} -m venv {venv}",
            f"{python} -m pip install --quiet '{pip_pin}'",
            f"{python} -m pip install --quiet " + " ".join(f"'{line}'" for line in install_lines(lines)),
        ]
    )
    return subprocess.Popen(["bash", "-c", script], stdout=open(log, "w"), stderr=subprocess.STDOUT), venv, log


def start_artifacts(out: Path) -> tuple[subprocess.Popen, Path]:
    """With the project venv: seeded YOLOv10n -> W4 RTN state dict -> FP and QCDQ ONNX + export JSONs."""
    code = textwrap.dedent(
        f"""
        from yolo_w4.config import default_recipe
        from yolo_w4.steps_torch import export_step, quantize_step, seeded_step
        out = {str(out)!r}
        seeded_step(out + "/yolov10n-seed0.pt", "yolov10n.yaml", 0)
        quantize_step(out + "/yolov10n-seed0.pt", out + "/{W4}.pt", "{W4}", default_recipe(), head="one2one", imgsz={IMGSZ}, device="cpu")
        export_step(out + "/yolov10n-seed0.pt", out + "/fp.onnx", out + "/fp.json", precision="fp32", head="one2one", imgsz={IMGSZ}, config={{"run_id": "env-venvs"}})
        export_step(out + "/yolov10n-seed0.pt", out + "/{W4}.onnx", out + "/{W4}.json", quantized=out + "/{W4}.pt",
                    precision="fp32", head=None, imgsz={IMGSZ}, config={{"run_id": "env-venvs"}})
        """
    )
    log = out / "artifacts.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "YOLO_CONFIG_DIR": str(out / ".ultralytics")}
    with open(log, "w") as stream:  # the child keeps its own copy of the handle
        process = subprocess.Popen(
            [str(PROJECT_PYTHON), "-c", code], cwd=out, env=env, stdout=stream, stderr=subprocess.STDOUT
        )
    return process, log


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Start both venvs and the ONNX exports at once (2 cores: pip unpacks while PyTorch exports)."""
    images, annotations = shared(*VAL_IMAGES), shared(*VAL_ANNOTATIONS)  # skip (fail under CI) without the data
    train_images, train_annotations = shared(*TRAIN_IMAGES), shared(*TRAIN_ANNOTATIONS)
    started = time.perf_counter()
    artifacts_dir = tmp_path_factory.mktemp("artifacts")
    jobs = {
        "artifacts": (*start_artifacts(artifacts_dir), artifacts_dir),
        "onnxruntime.yaml": start_venv("onnxruntime.yaml", tmp_path_factory.mktemp("env-onnxruntime")),
        "report.yaml": start_venv("report.yaml", tmp_path_factory.mktemp("env-report")),
    }
    yield {"jobs": jobs, "images": images, "annotations": annotations, "train_images": train_images,
           "train_annotations": train_annotations, "started": started}  # fmt: skip
    for name, (process, first, _) in jobs.items():
        if process.poll() is None:
            process.kill()
            process.wait()
        if name != "artifacts":
            shutil.rmtree(first, ignore_errors=True)  # ~1 GB each; pytest keeps its last 3 tmp dirs (build logs stay)


def finished(builds, name: str, timeout=900):
    process, first, second = builds["jobs"][name]
    log = second if name == "artifacts" else first.parent / "build.log"
    code = process.wait(timeout=timeout)
    assert code == 0, f"{name}: build failed (exit {code}):\n{log.read_text()[-3000:]}"
    print(f"{name} ready after {time.perf_counter() - builds['started']:.0f} s")
    return first if name != "artifacts" else second


@pytest.fixture(scope="module")
def onnxruntime_venv(builds) -> Path:
    """A venv of envs/onnxruntime.yaml's pip lines (onnxruntime-gpu without its CUDA extras)."""
    return finished(builds, "onnxruntime.yaml")


@pytest.fixture(scope="module")
def report_venv(builds) -> Path:
    """A venv of exactly envs/report.yaml's pip lines."""
    return finished(builds, "report.yaml")


@pytest.fixture(scope="module")
def artifacts(builds) -> Path:
    return finished(builds, "artifacts")


# Runs a rule script as Snakemake's `script:` does: a global `snakemake` with input, output,
# params, log, wildcards, config and rule (Namedlists: by name, by index, .get, .items).
DRIVER = textwrap.dedent(
    """
    import json, runpy, sys, types

    class Namedlist(list):
        def __init__(self, named):
            super().__init__(x for v in named.values() for x in (v if isinstance(v, list) else [v]))
            self._named = dict(named)
            for key, value in named.items():
                setattr(self, key, value)
        def get(self, key, default=None):
            return self._named.get(key, default)
        def items(self):
            return self._named.items()

    job = json.loads(sys.argv[1])
    snakemake = types.SimpleNamespace(
        input=Namedlist(job["input"]), output=Namedlist(job["output"]), log=Namedlist({"log": job["log"]}),
        params=types.SimpleNamespace(**job["params"]), wildcards=types.SimpleNamespace(**job["wildcards"]),
        config=job["config"], rule=job["rule"], threads=job["config"]["threads"],
    )
    runpy.run_path(job["script"], init_globals={"snakemake": snakemake}, run_name="__main__")
    """
)
CONFIG = {"run_id": "env-venvs", "trust_checkpoint": False, "threads": 1}  # threads: each job's, as Snakemake gives it


def run_rule_script(
    venv: Path, workdir: Path, rule: str, script: str, input=None, output=None, params=None, wildcards=None
):
    """Run scripts/<rule script> with the venv's Python, PYTHONPATH=<repo>/scripts, cwd workdir."""
    log = workdir / "logs" / f"{rule}-{'-'.join((wildcards or {}).values()) or 'all'}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    job = {
        "script": str(ROOT / script), "rule": rule, "config": CONFIG, "log": str(log),
        "input": input or {}, "output": output or {}, "params": params or {}, "wildcards": wildcards or {},
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT / "scripts")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", DRIVER, json.dumps(job)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log_text = log.read_text() if log.exists() else ""
    assert done.returncode == 0, (
        f"rule {rule} ({script}) failed in {venv.parent.name}:\n{done.stderr[-2000:]}\nlog:\n{log_text[-3000:]}"
    )
    return log_text


def assert_no_torch(venv: Path):
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr, "PyTorch must be absent from this env"


def installed(venv: Path) -> dict:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    return {p["name"].lower(): p["version"] for p in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def onnx_runs(onnxruntime_venv, artifacts, builds, tmp_path_factory) -> dict:
    """Every rule declaring envs/onnxruntime.yaml, run in its venv: probe, subsets, scoring, latency, INT4, picture."""
    rules = rules_using("onnxruntime.yaml")
    downloads = {
        "download_checkpoint",
        "download_coco_images",
        "download_coco_annotations",
    }  # run against a local HTTP server in tests/test_download.py
    assert set(rules) == {
        "probe_runtime", "coco_subset", "calibration_subset", "evaluate_coco", "benchmark_latency", "pack_int4", "draw_detections",
        *downloads,
    }, rules  # fmt: skip
    work = tmp_path_factory.mktemp("onnxruntime-run")
    run_dir = work / "results" / CONFIG["run_id"]
    runtime = run_dir / "runtime" / "onnxruntime.json"
    subset = {"ids": str(run_dir / "coco" / "image_ids.txt"), "annotations": str(run_dir / "coco" / "annotations.json")}
    models = {"fp": artifacts / "fp.onnx", W4: artifacts / f"{W4}.onnx"}
    timings = {}

    def step(rule, **kwargs):
        started = time.perf_counter()
        log = run_rule_script(onnxruntime_venv, work, rule, rules[rule], **kwargs)
        timings[rule + "/" + "/".join((kwargs.get("wildcards") or {}).values())] = round(
            time.perf_counter() - started, 1
        )
        return log

    step("probe_runtime", output={"_": str(runtime)}, params={"device": "auto", "precision": "auto"})
    step("coco_subset", input={"annotations": str(builds["annotations"]), "images": str(builds["images"]), "id_list": []},
         output=subset, params={"max_images": MAX_IMAGES})  # fmt: skip
    calibration = run_dir / "calibration" / "images.json"
    step("calibration_subset",
         input={"annotations": str(builds["train_annotations"]), "images": str(builds["train_images"]), "eval_subset": subset["annotations"],
                "eval_images": str(builds["images"]), "id_list": []},
         output={"_": str(calibration)}, params={"max_images": 4})  # fmt: skip
    precision = json.loads(runtime.read_text())["precision"]
    metrics = {}
    for variant, onnx in models.items():
        metrics[variant] = {
            k: str(run_dir / "metrics" / f"yolov10n-seed0-{variant}{s}.json")
            for k, s in (("metrics", ""), ("detections", "-detections"))
        }
        step(
            "evaluate_coco",
            input={**subset, "onnx": str(onnx), "record": str(onnx.with_suffix(".json")), "images": str(builds["images"]), "runtime": str(runtime)},
            output=metrics[variant],
            params={"head": "one2one", "imgsz": IMGSZ, "device": "auto", "precision": precision, "conf": 0.001, "iou": 0.7,
                    "max_det": 300, "multi_label": True},
            wildcards={"model": "yolov10n-seed0", "variant": variant},
        )  # fmt: skip
    latency = run_dir / "latency" / "yolov10n-seed0.json"
    step("benchmark_latency", input={**subset, "onnx": [str(p) for p in models.values()], "images": str(builds["images"])},
         output={"_": str(latency)},
         params={"names": list(models), "device": "auto", "images_timed": 2, "rounds": 2, "imgsz": IMGSZ})  # fmt: skip
    int4 = {
        "onnx": str(run_dir / "onnx" / f"yolov10n-seed0-{W4}-int4-ptq.onnx"),
        "record": str(run_dir / "onnx" / f"yolov10n-seed0-{W4}-int4-ptq.json"),
    }
    step(
        "pack_int4", input={"onnx": str(models[W4])}, output=int4, wildcards={"model": "yolov10n-seed0", "variant": W4}
    )
    picture = run_dir / "report" / "detections" / f"yolov10n-seed0-{W4}.png"
    step("draw_detections",
         input={"annotations": subset["annotations"], "fp": metrics["fp"]["detections"], "variant": metrics[W4]["detections"],
                "fp_metrics": metrics["fp"]["metrics"], "images": str(builds["images"])},
         output={"_": str(picture)}, params={"conf": 0.25, "image_id": None}, wildcards={"model": "yolov10n-seed0", "variant": W4})  # fmt: skip
    print(f"onnxruntime env rule seconds: {timings}")
    return {"runtime": runtime, "subset": subset, "calibration": calibration, "metrics": metrics, "latency": latency, "int4": int4, "picture": picture,
            "models": models, "work": work}  # fmt: skip


def test_onnxruntime_env_is_the_pinned_set_without_pytorch(onnxruntime_venv):
    assert_no_torch(onnxruntime_venv)
    have = installed(onnxruntime_venv)
    _, lines = env_spec("onnxruntime.yaml")
    for line in install_lines(lines):
        package, version = line.split("==")
        assert have.get(package.lower()) == version, f"{line}: installed {have.get(package.lower())}"
    assert have["pip"].startswith(env_spec("onnxruntime.yaml")[0].removeprefix("pip==").rstrip(".*"))
    assert not any(name.startswith("nvidia-") for name in have), "the CUDA extras were left out on purpose"
    assert "onnxruntime" not in have, "only onnxruntime-gpu provides the onnxruntime module"


def test_onnxruntime_env_runs_its_rules(onnx_runs):
    probe = json.loads(onnx_runs["runtime"].read_text())
    assert probe["provider_used"] == "CPUExecutionProvider"
    assert probe["cuda_reason"], "onnxruntime-gpu finds no CUDA here and must say why"
    assert "CUDAExecutionProvider" in probe["providers_compiled_in"], "onnxruntime-gpu's CUDA provider is compiled in"
    assert probe["precision"] == "fp32" and probe["onnxruntime"] == "1.31.1"
    assert probe["versions"]["torch"] is None and probe["versions"]["onnxruntime-gpu"] == "1.31.1"

    ids = Path(onnx_runs["subset"]["ids"]).read_text().split()
    assert len(ids) == MAX_IMAGES
    calibration = json.loads(onnx_runs["calibration"].read_text())["ids"]
    assert len(calibration) == 4 and not {str(i) for i in calibration} & set(ids)
    for variant, paths in onnx_runs["metrics"].items():
        record = json.loads(Path(paths["metrics"]).read_text())
        assert record["variant"] == variant and record["images"] == MAX_IMAGES
        assert len(record["metrics"]) == 12 and all(v is None or -1 <= v <= 1 for v in record["metrics"].values()), (
            record["metrics"]
        )
        assert record["provider_used"] == "CPUExecutionProvider" and record["cuda_reason"] == probe["cuda_reason"]
        assert record["versions"]["torch"] is None
        assert isinstance(json.loads(Path(paths["detections"]).read_text()), list)
    assert json.loads(Path(onnx_runs["metrics"][W4]["metrics"]).read_text())["weight_bits"] == 4

    latency = json.loads(onnx_runs["latency"].read_text())
    assert set(latency["models"]) == {"fp", W4} and len(latency["images"]) == 2
    assert all(m["provider_used"] == "CPUExecutionProvider" and m["median_ms"] > 0 for m in latency["models"].values())

    packed = json.loads(Path(onnx_runs["int4"]["record"]).read_text())
    assert packed["format"] == "int4" and packed["layers_packed"] > 0
    assert packed["parity_vs_qcdq"]["max_abs_diff"] <= 1e-6 * 1000, packed["parity_vs_qcdq"]
    assert Path(onnx_runs["int4"]["onnx"]).stat().st_size == packed["bytes"] < packed["qcdq_bytes"]

    assert onnx_runs["picture"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int4_file_from_the_env_matches_the_qcdq_model(onnx_runs, onnxruntime_venv):
    """The packed file, reopened in the env's ONNX Runtime on a real letterboxed photo: same outputs as QCDQ."""
    code = textwrap.dedent(
        f"""
        import sys, numpy as np, onnx
        from yolo_w4.coco_subset import image_paths, load_coco, read_ids
        from yolo_w4.preprocess import load_input
        from yolo_w4.runtime import create_session, input_feed
        coco = load_coco({onnx_runs["subset"]["annotations"]!r})
        photo = image_paths(coco, {str(shared(*VAL_IMAGES))!r})[read_ids({onnx_runs["subset"]["ids"]!r})[0]]
        tensor, _ = load_input(photo, {IMGSZ})
        packed = onnx.load({onnx_runs["int4"]["onnx"]!r})
        assert any(t.data_type == onnx.TensorProto.INT4 for t in packed.graph.initializer), "INT4 initializers"
        outs = []
        for path in ({str(onnx_runs["models"][W4])!r}, {onnx_runs["int4"]["onnx"]!r}):
            session, _ = create_session(path, "cpu")
            outs.append(session.run(None, input_feed(session, tensor))[0].astype(np.float64))
        diff = float(np.abs(outs[0] - outs[1]).max())
        assert diff <= 1e-6 * max(1.0, float(np.abs(outs[0]).max())), diff
        print(diff)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(onnxruntime_venv / "bin" / "python"), "-c", code], cwd=onnx_runs["work"],
                          env={**env, "PYTHONPATH": str(ROOT / "scripts")}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_report_env_is_exactly_the_pinned_set_without_pytorch(report_venv):
    assert_no_torch(report_venv)
    have = installed(report_venv)
    _, lines = env_spec("report.yaml")
    assert install_lines(lines) == lines, "report.yaml is installed exactly as written"
    for line in lines:
        package, version = line.split("==")
        assert have.get(package.lower()) == version, f"{line}: installed {have.get(package.lower())}"
    assert "onnxruntime" not in have and "onnxruntime-gpu" not in have and "opencv-python" not in have


def test_report_env_runs_the_deltas_report(report_venv, onnx_runs, artifacts, tmp_path):
    rules = rules_using("report.yaml")
    assert rules == {"deltas_report": "scripts/deltas_report.py"}, rules  # draw_detections runs in the onnxruntime env
    names = ["fp", W4]
    outputs = {key: str(tmp_path / "report" / name) for key, name in {
        "csv": "deltas.csv", "markdown": "deltas.md", "html": "deltas.html", "rst": "summary.rst", "json": "deltas.json",
        "map_plot": "map.png", "size_plot": "size_vs_map.png", "latency_plot": "latency.png"}.items()}  # fmt: skip
    run_rule_script(
        report_venv, tmp_path, "deltas_report", rules["deltas_report"],
        input={
            "annotations": onnx_runs["subset"]["annotations"],
            "metrics": [onnx_runs["metrics"][n]["metrics"] for n in names],
            "detections": [onnx_runs["metrics"][n]["detections"] for n in names],
            "exports": [str(artifacts / f"{n}.json") for n in names],
            "packed": [onnx_runs["int4"]["record"]],
            "latency": str(onnx_runs["latency"]),
        },
        output=outputs,
        params={"names": names, "packed": [W4], "resamples": 50, "seed": 0, "agreement_conf": 0.25},
    )  # fmt: skip
    markdown = Path(outputs["markdown"]).read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 2 and table[0].startswith("| fp") and W4 in table[1], markdown
    import csv

    rows = list(csv.DictReader(Path(outputs["csv"]).read_text().splitlines()))
    assert [r["variant"] for r in rows] == names
    assert rows[1]["int4_bytes"] and float(rows[1]["size_ratio"]) < 1
    assert rows[1]["delta_mAP50_95_ci_low"] != "" or rows[1]["mAP50_95"] == "", rows[1]
    assert json.loads(Path(outputs["json"]).read_text())["versions"]["torch"] is None
    for key in ("map_plot", "size_plot", "latency_plot"):
        assert Path(outputs[key]).read_bytes()[:4] == b"\x89PNG", key
    assert "<table" in Path(outputs["html"]).read_text()
