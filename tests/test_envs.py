"""Static checks of the conda envs (no conda here): present, small, pinned, agreeing with pip."""

import json
import re

import pytest
import yaml

from conftest import ROOT


def requirement_pins() -> dict:
    pins = {}
    for name in ("requirements.txt", "requirements-workflow.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                package, version = line.split("==")
                pins[package.split("[")[0].lower()] = version
    return pins


def env_files_used_by_rules() -> set:
    used = set()
    for rules in (ROOT / "rules").glob("*.smk"):
        used |= set(re.findall(r'conda:\s*\n\s*"\.\./(envs/[^"]+)"', rules.read_text()))
    return used


def test_every_rule_names_an_env_that_exists():
    used = env_files_used_by_rules()
    assert used, "rules declare conda envs"
    for env in used:
        assert (ROOT / env).is_file(), env
    assert used == {f"envs/{p.name}" for p in (ROOT / "envs").glob("*.yaml")}, "no unused env files"


def test_envs_are_conda_forge_first_and_pinned_like_pip():
    pins = requirement_pins()
    for env in env_files_used_by_rules():
        spec = yaml.safe_load((ROOT / env).read_text())
        assert spec["channels"][0] == "conda-forge", env
        conda = [d for d in spec["dependencies"] if isinstance(d, str)]
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        assert all(re.fullmatch(r"[a-z0-9_.-]+=[0-9][0-9.*]*", d) for d in conda), conda
        for line in pip:
            package, version = line.split("==")
            package = (
                package.split("[")[0].lower().removesuffix("-gpu")
            )  # onnxruntime-gpu[cuda,cudnn]: same release, CUDA provider + its CUDA libraries
            assert pins.get(package) == version, f"{env}: {line} disagrees with requirements ({pins.get(package)})"


def test_every_rule_has_a_log():
    for rules in (ROOT / "rules").glob("*.smk"):
        text = rules.read_text()
        assert text.count("\nrule ") + text.startswith("rule ") == text.count("    log:"), rules.name


def test_rules_in_envs_without_pytorch_import_no_pytorch():
    """A rule script in an env without torch must not pull it in (steps.py does; eval_steps.py must not)."""
    import subprocess
    import sys

    def has_torch(env: str) -> bool:
        dependencies = yaml.safe_load((ROOT / "envs" / env).read_text())["dependencies"]
        pip = next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)
        return any(p.startswith("torch==") for p in pip)

    scripts = []
    for rules in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"\nrule ", rules.read_text()):
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"\.\./(scripts/[^"]+)"', block)
            if env and script and not has_torch(env.group(1)):
                scripts.append(script.group(1))
    assert "scripts/pack_int4.py" in scripts and "scripts/deltas_report.py" in scripts
    imports = sorted(
        {line for s in scripts for line in (ROOT / s).read_text().splitlines() if line.startswith("from yolo_w4")}
    )
    blocked = "import sys\nfor name in ('torch', 'brevitas', 'ultralytics'):\n    sys.modules[name] = None\n"
    result = subprocess.run(
        [sys.executable, "-c", blocked + "\n".join(imports)], cwd=ROOT / "scripts", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-1500:]


def env_pip_lines(env: str) -> list[str]:
    dependencies = yaml.safe_load((ROOT / "envs" / env).read_text())["dependencies"]
    return next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)


@pytest.mark.parametrize("env", ["torch.yaml", "onnxruntime.yaml", "report.yaml"])
def test_env_pip_section_resolves_from_the_registry(env, tmp_path):
    """What `--use-conda` would install resolves (pip's own resolver, no download of wheels).

    Conda cannot run here, so the nearest real proof: exactly the env's pip lines, for the
    env's Python (3.11, this interpreter). onnxruntime-gpu's [cuda,cudnn] extras must bring
    the same CUDA 13 libraries PyTorch uses, one version of each.
    """
    import subprocess
    import sys

    if sys.version_info[:2] != (3, 11):
        pytest.skip("the envs pin python=3.11; resolve them with a 3.11 interpreter")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(env_pip_lines(env)) + "\n")
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:",
               "--report", str(report), "-r", str(requirements)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{env} does not resolve: {done.stderr[-1500:]}"
    resolved = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    for line in env_pip_lines(env):
        package, version = line.split("==")
        assert resolved[package.split("[")[0].lower()] == version, f"{env}: {line} resolved to another version"
    if "onnxruntime-gpu" in resolved:
        assert resolved["nvidia-cuda-runtime"].startswith("13."), "onnxruntime-gpu 1.31 is built for CUDA 13"
        assert "nvidia-cudnn-cu13" in resolved and "nvidia-cufft" in resolved, "the [cuda,cudnn] extras are resolved"
    if "torch" in resolved:
        torch_meta = next(i for i in json.loads(report.read_text())["install"] if i["metadata"]["name"] == "torch")
        needs = torch_meta["metadata"].get("requires_dist", [])
        assert any(d.startswith("nvidia-cudnn-cu13==") for d in needs), (
            "PyTorch's CUDA 13 build, sharing cuDNN with ONNX Runtime"
        )
