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
