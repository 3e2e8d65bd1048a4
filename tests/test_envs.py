"""Static checks of the conda envs (no conda here): present, small, pinned, agreeing with pip."""

import re

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
            package = package.lower().removesuffix("-gpu")  # onnxruntime-gpu: same release, CUDA provider
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
    imports = sorted({line for s in scripts for line in (ROOT / s).read_text().splitlines() if line.startswith("from yolo_w4")})
    blocked = "import sys\nfor name in ('torch', 'brevitas', 'ultralytics'):\n    sys.modules[name] = None\n"
    result = subprocess.run([sys.executable, "-c", blocked + "\n".join(imports)], cwd=ROOT / "scripts", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
