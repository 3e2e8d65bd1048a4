"""Rule ultralytics_assets: copy the photos that ship with Ultralytics (offline demo images)."""

import shutil
from pathlib import Path

from yolo_w4.rule_runner import run_rule
from yolo_w4.seeded import asset_images


def copy_assets(output):
    Path(output).mkdir(parents=True, exist_ok=True)
    for image in asset_images():
        shutil.copy2(image, Path(output) / image.name)
        print(f"copied {image}")


run_rule(snakemake, copy_assets, output=snakemake.output[0])  # noqa: F821
