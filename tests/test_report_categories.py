"""The report's categories, read from rules/*.smk: numbered 1..N in reading order, no gap, no duplicate."""

import ast
import itertools
import re

from conftest import ROOT

RULES = sorted((ROOT / "rules").glob("*.smk"))


def categories_block() -> tuple[list[str], ast.FunctionDef]:
    """REPORT_CATEGORIES' names in order (duplicates kept) and report_category(), from rules/common.smk."""
    text = (ROOT / "rules" / "common.smk").read_text()
    start = text.index("REPORT_CATEGORIES = {")
    end = text.index("\n\n\n", text.index("def report_category("))
    module = ast.parse(text[start:end])
    table = next(node.value for node in module.body if isinstance(node, ast.Assign))
    function = next(node for node in module.body if isinstance(node, ast.FunctionDef))
    return [key.value for key in table.keys], function


def used_categories() -> list[str]:
    """Every category= of a report() in rules/*.smk and the Snakefile; each must be report_category("...")."""
    used = []
    for path in [*RULES, ROOT / "Snakefile"]:
        for line in path.read_text().splitlines():
            if "category=" in line and not line.lstrip().startswith(("#", '"""')) and "def " not in line:
                match = re.search(r'\bcategory=report_category\("([^"]+)"\),?$', line.strip())
                assert match, f'{path.name}: {line.strip()} (use category=report_category("Name"), not a number)'
                used.append(match.group(1))
    return used


def numbering(filled: dict[str, bool]) -> dict[str, str]:
    """report_category() of rules/common.smk for each name, as a run that fills `filled` gets it."""
    _, function = categories_block()
    namespace = {"REPORT_CATEGORIES": filled}
    exec(compile(ast.Module([function], []), "rules/common.smk", "exec"), namespace)
    return {name: namespace["report_category"](name) for name in filled}


def test_each_category_is_declared_once_and_used():
    names, _ = categories_block()
    assert len(names) == len(set(names)), f"a category twice in REPORT_CATEGORIES: {names}"
    assert names[0] == "Deltas vs FP", "the deltas come first"
    used = used_categories()
    assert set(used) == set(names), (
        f"used but not declared: {sorted(set(used) - set(names))}; declared but unused (a gap in every run): "
        f"{sorted(set(names) - set(used))}"
    )


def test_numbering_has_no_gap_or_duplicate_in_any_run():
    names, _ = categories_block()
    for flags in itertools.product([True, False], repeat=len(names)):
        filled = dict(zip(names, flags, strict=True))
        labels = numbering(filled)
        shown = [labels[name] for name in names if filled[name]]
        assert shown == [f"{i}. {name}" for i, name in enumerate((n for n in names if filled[n]), 1)], filled
        assert sorted(shown) == shown, "Snakemake's menu sorts by name: that must be the reading order"
        for name in names:
            assert labels[name].endswith(f". {name}"), "an empty category still gets a label (no report item)"
