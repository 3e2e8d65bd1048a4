"""The library's import graph has no circle: each module stands above all it imports (the grid at the bottom)."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "scripts" / "yolo_w4"


def imports_of(path: Path) -> set[str]:
    """The yolo_w4 modules a module imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("yolo_w4."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "yolo_w4":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("yolo_w4."))
    return names


def test_no_module_imports_itself_through_others():
    graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")}
    assert {"grid", "quantize", "groupwise", "ptq"} <= set(graph)
    assert graph["grid"] == set(), "the grid imports nothing of ours: every technique builds on it"
    done, path = set(), []

    def visit(module):
        if module in path:
            circle = [*path[path.index(module) :], module]
            raise AssertionError(f"import circle: {' -> '.join(circle)}")
        if module in done or module not in graph:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
