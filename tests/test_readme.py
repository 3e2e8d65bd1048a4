"""README.md is the front door: short, its recipes in the catalog, its default rows what the committed benchmark says."""

import csv
import re

import yaml

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def recipe_rows() -> dict:
    """{recipe: cells} of the "Choosing a recipe" table."""
    section = README.split("## Choosing a recipe", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "`" in line]
    return {re.search(r"`(\w+)`", cells[1]).group(1): [c.strip() for c in cells] for cells in rows}


def test_readme_is_a_short_front_door_with_the_two_commands():
    assert len(README.encode()) <= 12 * 1024, f"README.md is {len(README.encode())} bytes: move detail to docs/"
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make ([\w-]+)`", README):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"README names make {target}, not a target"
    for link in re.findall(r"\]\(((?:docs|config)/[^)#]+)", README):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_readme_recipes_are_the_catalog_and_the_default_build():
    rows = recipe_rows()
    assert set(rows) - {"fp"} <= set(CONFIG["variants"]), "every recipe README recommends is in the catalog"
    defaults = [name for name, cells in rows.items() if "(default)" in cells[0]]
    assert defaults == CONFIG["build"], "README's default rows are config.yaml's build"


def test_readme_default_rows_are_the_calibration_curve_at_the_default_count():
    """The numbers users judge the default by are those `make calibration-curve` committed, at config.yaml's count."""
    count = str(CONFIG["calibration"]["max_images"])
    curve = ROOT / "docs" / "results" / "calibration-curve-yolov5n.csv"
    measured = {r["variant"]: r for r in csv.DictReader(curve.open()) if r["calibration_images"] == count}
    rows = recipe_rows()
    for name in CONFIG["build"]:
        cells, row = rows[name], measured[name]
        assert cells[3] == f"{float(row['mAP50_95']):.3f}", name
        assert cells[4].strip("*") == f"{float(row['retained_pct_mAP50_95']):.1f}%", name
        assert cells[5].startswith(f"{float(row['delta_mAP50_95']):.4f} [{float(row['delta_mAP50_95_ci_low']):.4f}"), (
            name
        )
