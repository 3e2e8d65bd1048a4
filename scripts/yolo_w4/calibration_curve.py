"""`make calibration-curve`: accuracy against the number of calibration photos.

For each count N the workflow runs once more with `calibration.max_images: N` laid over the
given config files (its own run id, `<run_id>-cal<N>`), building the default recipes; the
rows of each run's deltas.csv are gathered into one table (printed, and written as CSV), from
which config.yaml's `calibration.max_images` is chosen. The workflow's own rules do the work,
so every number is one the report would show.

    python -m yolo_w4.calibration_curve --configfile config/accuracy-yolov5n.yaml \
        --counts 16 32 64 128 --out docs/results/calibration-curve-yolov5n.csv
"""

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import yaml

from yolo_w4.bench import snakemake
from yolo_w4.config import load_config
from yolo_w4.files import atomic_path

COLUMNS = (
    "calibration_images",
    "variant",
    "bits_per_weight",
    "mAP50_95",
    "delta_mAP50_95",
    "retained_pct_mAP50_95",
    "delta_mAP50_95_ci_low",
    "delta_mAP50_95_ci_high",
    "agreement_mAP50_95",
    "agreement_mAP50",
    "ptq_seconds",
)


def curve(configfiles: list[Path], counts: list[int], variants: list[str], out: Path, cores: int) -> list[dict]:
    """One workflow run per count; the variants' rows of each run's deltas table."""
    base = "default"  # the run id the config files name (the last one that does)
    for path in configfiles:
        base = (yaml.safe_load(path.read_text()) or {}).get("run_id", base)
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for count in counts:
        with tempfile.TemporaryDirectory() as folder:
            overlay = Path(folder) / f"calibration-{count}.yaml"
            overlay.write_text(
                yaml.safe_dump(
                    {"run_id": f"{base}-cal{count}", "calibration": {"max_images": count}, "build": variants}
                )
            )
            snakemake(Path("."), cores, [*configfiles, overlay])
        table = Path("results") / f"{base}-cal{count}" / "report" / "deltas.csv"
        for row in csv.DictReader(table.open()):
            if row["variant"] in variants:
                rows.append({"calibration_images": count, **{k: row.get(k, "") for k in COLUMNS[1:]}})
        print(f"calibration-curve: {count} photos done ({table})", flush=True)
    with atomic_path(out) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def build_of(configfiles: list[Path]) -> list[str]:
    """The recipes the config files build: the last one's `build` that names any, else config.yaml's."""
    build = load_config()["build"]
    for path in configfiles:
        build = (yaml.safe_load(path.read_text()) or {}).get("build", build)
    return build


def markdown(rows: list[dict]) -> str:
    lines = ["| photos | " + " | ".join(COLUMNS[1:]) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(row[k]) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo_w4.calibration_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", type=Path, required=True, help="laid over config/config.yaml")
    parser.add_argument("--counts", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--variant", nargs="+", help="the recipes (default: the config files' build)")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="the CSV written")
    args = parser.parse_args(argv)
    variants = args.variant or build_of(args.configfile)
    print(markdown(curve(args.configfile, args.counts, variants, args.out, args.cores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
