"""Static checks of the conda envs (no conda here): present, small, pinned, agreeing with pip."""

import ast
import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

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
    """Dynamic complement of the static import graph below: a rule script in an env without torch imports
    (its module-level imports, really executed) with torch, torchvision, brevitas and ultralytics made unimportable."""
    import subprocess

    scripts = [script for _, env, script in RULES if not any(p.startswith("torch==") for p in env_pip_lines(env))]
    assert "scripts/pack_int4.py" in scripts and "scripts/deltas_report.py" in scripts
    imports = sorted(
        {
            ast.unparse(node)
            for s in scripts
            for node in ast.parse((ROOT / s).read_text()).body
            if isinstance(node, ast.Import | ast.ImportFrom)
        }
    )
    assert any(i.startswith("from yolo_w4.steps_onnxruntime import") for i in imports), imports
    blocked = (
        "import sys\nfor name in ('torch', 'torchvision', 'brevitas', 'ultralytics'):\n    sys.modules[name] = None\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked + "\n".join(imports)], cwd=ROOT / "scripts", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-1500:]


# ---- The env boundary at any import depth (static: `ast` only, nothing is imported) ----
#
# A rule runs its script in its conda env. Whatever that script can import -- yolo_w4 modules followed
# transitively through every import statement, at module level or inside a function or method -- must
# find its third-party packages in that env's pip list. Packages are counted where OUR code imports them;
# what a third-party package imports itself (e.g. Ultralytics -> PIL) is that package's business.

PACKAGE = "yolo_w4"

# import name -> the pip distributions that provide it (default: the import name itself)
IMPORT_DISTRIBUTIONS = {
    "cv2": {"opencv-python", "opencv-python-headless"},
    "yaml": {"pyyaml"},
    "PIL": {"pillow"},
    "sklearn": {"scikit-learn"},
    "skimage": {"scikit-image"},
    "onnxruntime": {"onnxruntime", "onnxruntime-gpu"},
    "google": {"protobuf"},
}

# (env, yolo_w4 module, top-level function) whose imports are NOT followed for that env's rules: a lazy
# import in a function none of the env's rules can call. test_lazy_import_allowances_hold checks that each
# entry still hides a package the env lacks and that no module those rules reach names the function.
LAZY_IMPORTS_NOT_RUN = {}


def rules_with_scripts() -> list[tuple[str, str, str]]:
    """(rule, env file name, script path) for every rule in rules/*.smk that runs a script."""
    found = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            script = re.search(r'^    script:\s*\n\s*"\.\./(scripts/[^"]+)"', block, re.M)
            if not (name and script):
                continue
            env = re.search(r'^    conda:\s*\n\s*"\.\./envs/([^"]+)"', block, re.M)
            assert env, f"rule {name.group(1)} ({smk.name}) runs {script.group(1)} outside a conda env"
            found.append((name.group(1), env.group(1), script.group(1)))
    return found


RULES = rules_with_scripts()


@dataclass(frozen=True)
class Imported:
    name: str  # dotted module name, relative imports resolved
    line: int
    scope: str  # the enclosing def/class (dotted); "" at module level
    maybe_attribute: bool = False  # `from A import b`: A.b may be a name in A rather than a module


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath("scripts", *module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def source_of(node: str) -> Path:
    """A node of the graph is a rule script ("scripts/x.py") or a yolo_w4 module ("yolo_w4.x")."""
    return ROOT / node if node.endswith(".py") else module_file(node)


@functools.cache
def imports_in(node: str) -> tuple[Imported, ...]:
    """Every import in a file, at any depth: import, from-import (relative resolved), and
    importlib.import_module / __import__ of a constant string."""
    path = source_of(node)
    package = node if path.name == "__init__.py" else node.rpartition(".")[0]
    found = []

    def visit(parent, scope):
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, [*scope, child.name])
                continue
            where = {"line": getattr(child, "lineno", 0), "scope": ".".join(scope)}
            if isinstance(child, ast.Import):
                found.extend(Imported(alias.name, **where) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    assert not node.endswith(".py"), f"{node}:{child.lineno}: relative import in a rule script"
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found.append(Imported(base, **where))
                found.extend(Imported(f"{base}.{a.name}", **where, maybe_attribute=True) for a in child.names)
            elif (
                isinstance(child, ast.Call)
                and getattr(child.func, "attr", getattr(child.func, "id", None)) in ("import_module", "__import__")
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found.append(Imported(child.args[0].value, **where))
            visit(child, scope)

    visit(ast.parse(path.read_text(), str(path)), [])
    return tuple(found)


def own_modules(imported: Imported) -> list[str]:
    """The yolo_w4 modules an import executes: every package on the way down, then the module."""
    parts = imported.name.split(".")
    if parts[0] != PACKAGE:
        return []
    modules = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    present = [m for m in modules if module_file(m)]
    assert present[-1] == modules[-1] or (imported.maybe_attribute and present[-1] == modules[-2]), (
        f"{imported.name} is not a module of scripts/{PACKAGE}"
    )
    return present


def third_party(imported: Imported) -> str | None:
    top = imported.name.split(".")[0]
    return None if top in (PACKAGE, "") or top in sys.stdlib_module_names else top


def lazy_function(env: str, node: str, imported: Imported) -> str | None:
    function = imported.scope.split(".")[0]
    return function if imported.scope and (env, node, function) in LAZY_IMPORTS_NOT_RUN else None


@functools.cache
def reach(script: str, env: str) -> dict[str, tuple[str, Imported] | None]:
    """Every file a rule's script can import (itself and yolo_w4 modules) -> (the node that first imports it, how)."""
    parents: dict[str, tuple[str, Imported] | None] = {script: None}
    queue = [script]
    while queue:
        node = queue.pop(0)  # breadth first: the chains reported are the shortest
        for imported in imports_in(node):
            if lazy_function(env, node, imported):
                continue
            for module in own_modules(imported):
                if module not in parents:
                    parents[module] = (node, imported)
                    queue.append(module)
    return parents


def chain(parents: dict, node: str, where: bool = False) -> str:
    """script -> module -> ... -> node; with `where`, each link says where it imports the next one."""
    links = [node]
    while parents[node] is not None:
        node, imported = parents[node]
        links.append(f"{node}{located(imported)}" if where else node)
    return " -> ".join(reversed(links))


def located(imported: Imported) -> str:
    return f" (line {imported.line}" + (f" in {imported.scope}())" if imported.scope else ")")


def packages_reached(script: str, env: str) -> dict[str, list[tuple[str, Imported]]]:
    """Third-party import name -> every (yolo_w4 module or script, import) of it that the rule can reach."""
    found: dict[str, list[tuple[str, Imported]]] = {}
    for node in reach(script, env):
        for imported in imports_in(node):
            top = third_party(imported)
            if top and not lazy_function(env, node, imported):
                found.setdefault(top, []).append((node, imported))
    return found


def env_distributions(env: str) -> set[str]:
    return {re.split(r"[\[=<>!~; ]", line, maxsplit=1)[0].lower() for line in env_pip_lines(env)}


def distributions_for(import_name: str) -> set[str]:
    return IMPORT_DISTRIBUTIONS.get(import_name, {import_name.lower().replace("_", "-")})


@pytest.mark.parametrize(("rule", "env", "script"), RULES, ids=[rule for rule, _, _ in RULES])
def test_every_package_a_rule_can_import_is_in_its_env(rule, env, script):
    """Each third-party package reachable from the rule's script, at any import depth, is in its env's pip list."""
    installed = env_distributions(env)
    parents = reach(script, env)
    missing = []
    for package, sites in sorted(packages_reached(script, env).items()):
        if distributions_for(package) & installed:
            continue
        statements: dict = {}
        for node, imported in sites:  # `from a import b, c` once
            statements.setdefault((node, imported.line), (node, imported))
        for node, imported in statements.values():
            missing.append(
                f"rule {rule} (envs/{env}): {chain(parents, node, where=True)}{located(imported)} imports "
                f"{imported.name}, but envs/{env} has no {' or '.join(sorted(distributions_for(package)))}"
            )
    assert not missing, "\n".join(missing)


def test_import_graph_finds_what_each_env_is_for():
    """The checker sees the real graph (so the test above cannot pass on an empty one)."""
    envs = {rule: env for rule, env, _ in RULES}
    scripts = {rule: script for rule, _, script in RULES}
    assert len(RULES) >= 16 and set(envs.values()) == {"torch.yaml", "onnxruntime.yaml", "report.yaml"}, RULES

    def packages(rule):
        return set(packages_reached(scripts[rule], envs[rule]))

    torch_steps = [rule for rule, env, script in RULES if "yolo_w4.steps_torch" in reach(script, env)]
    assert len(torch_steps) >= 7 and all(envs[rule] == "torch.yaml" for rule in torch_steps), torch_steps
    for rule in torch_steps:
        assert {"torch", "brevitas", "ultralytics", "onnx"} <= packages(rule), (rule, packages(rule))
    assert {"torch", "brevitas", "ultralytics", "onnx"} <= packages("quantize_weights")
    assert {"matplotlib", "pycocotools", "numpy"} <= packages("deltas_report")
    assert {"onnxruntime", "onnx", "pycocotools", "cv2", "tqdm"} <= packages("evaluate_coco")
    assert "torch" not in packages("evaluate_coco") and "matplotlib" not in packages("evaluate_coco")
    # `from yolo_w4 import plots` inside a function is followed, and so is the package's __init__
    report_parents = reach(scripts["deltas_report"], envs["deltas_report"])
    assert chain(report_parents, "yolo_w4.plots") == "scripts/deltas_report.py -> yolo_w4.steps_report -> yolo_w4.plots"
    assert "yolo_w4" in report_parents
    # a function-level import of a yolo_w4 module, one level further down (steps_torch.quantize_step)
    torch_parents = reach(scripts["quantize_weights"], envs["quantize_weights"])
    assert chain(torch_parents, "yolo_w4.reconstruct").startswith("scripts/quantize_weights.py -> yolo_w4.steps_torch")


def test_lazy_import_allowances_hold():
    """Each LAZY_IMPORTS_NOT_RUN entry hides a package its env lacks, and none of the env's rules can call it:
    no module they reach (the function's own module included) names the function."""
    for (env, module, function), reason in LAZY_IMPORTS_NOT_RUN.items():
        scripts = [script for _, e, script in RULES if e == env]
        nodes = {node for script in scripts for node in reach(script, env)}
        assert module in nodes, f"{module} is no longer reached by the rules in {env}: drop the entry"
        lazy = [i for i in imports_in(module) if i.scope.split(".")[0] == function]
        packages = {third_party(i) for i in lazy} - {None}
        for own in {m for i in lazy for m in own_modules(i)}:
            packages |= set(packages_reached(own, "(no env: nothing skipped)"))
        hidden = sorted(p for p in packages if not distributions_for(p) & env_distributions(env))
        assert hidden, f"{module}.{function} imports nothing {env} lacks: drop the entry ({reason})"
        for node in nodes:
            tree = ast.parse(source_of(node).read_text())
            names = [
                getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "name", None)
                for n in ast.walk(tree)
                if isinstance(n, ast.Name | ast.Attribute | ast.alias)
            ]
            assert function not in names, f"{node} names {module}.{function}, which imports {hidden} ({env} lacks them)"


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
