"""`make bench`: a seeded YOLOv10m through the whole workflow on this machine; where the time and bytes go.

Speed and size do not depend on training, so a seeded (random-weight) YOLOv10m stands in for
the real one. The workflow runs from scratch with `snakemake --cores N`; each rule's wall time
comes from its Snakemake benchmark file, model latency from the interleaved latency rule.
Writes <out>/bench.json and bench.md (with the machine's facts); `--before FILE` (an earlier
bench.json, e.g. made from an older commit with `--workdir`) adds a before/after table.

    python -m yolo_w4.bench --out results/bench              # this checkout
    python -m yolo_w4.bench --workdir /tmp/old --out results/bench-before   # another checkout
"""

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from yolo_w4.files import atomic_path, read_json, write_json

CHECKPOINT = "results/seeded/yolov10m-seed0.pt"
MODEL = "yolov10m-seed0"
SHARED = Path("../shared/data/coco2017/source-data")

# (row label, benchmark file under results/<run>/benchmarks/, note): the FP baseline's and the run's rules ...
RULES = (
    ("export_fp", "export_fp/{model}.tsv", ""),
    ("smoke_test fp", "smoke_test/{model}-fp.tsv", ""),
    ("evaluate_coco fp", "evaluate_coco/{model}-fp.tsv", ""),
    ("benchmark_latency", "benchmark_latency/{model}.tsv", "every model, interleaved"),
    ("synthesize_calibration", "synthesize_calibration/{model}.tsv", "data-free recipes only"),
)
# ... and each variant's, labelled "<label> <variant>"
VARIANT_RULES = (
    ("quantize_weights (whole job)", "quantize_weights/{model}-{variant}.tsv", "load, PTQ, write the state dict"),
    ("export_qcdq", "export_qcdq/{model}-{variant}.tsv", ""),
    ("smoke_test", "smoke_test/{model}-{variant}.tsv", ""),
    ("evaluate_coco", "evaluate_coco/{model}-{variant}.tsv", ""),
)


def machine() -> dict:
    """What the numbers were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory = next(
        (line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), None
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1) if memory else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _read(path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _seconds(path: Path):
    if not path.is_file():
        return None
    row = next(csv.DictReader(path.open(), delimiter="\t"))
    return round(float(row["s"]), 2)


def snakemake(workdir: Path, cores: int, configfiles: Path | list[Path], *targets, dry=False) -> float:
    """Run Snakemake in `workdir` with that checkout's library first on the path; return wall seconds."""
    configfiles = configfiles if isinstance(configfiles, list) else [configfiles]
    env = {**os.environ, "PYTHONPATH": str(workdir / "scripts")}
    env.setdefault("YOLO_OFFLINE", "1")
    # targets before --configfile, which would read them as more config files
    command = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "--cores",
        str(cores),
        "--configfile",
        *map(str, configfiles),
    ]
    if dry:
        command.append("-n")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: snakemake failed in {workdir} ({' '.join(command[3:])}):\n{result.stderr[-3000:]}")
    return round(time.perf_counter() - started, 2)


def bench(workdir: Path, out: Path, variants: list[str], cores: int, images: int, threads: int) -> dict:
    """Run the workflow from scratch on the seeded YOLOv10m, building `variants`; return the measurements."""
    workdir = workdir.resolve()
    coco = workdir / SHARED
    if not (coco / "val2017").is_dir():
        sys.exit(f"error: {coco} not found: make bench reads the COCO images of ../shared/data")
    run_id = f"bench-{'-'.join(variants)}"
    config = {
        "run_id": run_id,
        "checkpoint": CHECKPOINT,
        "head": "one2one",
        "threads": threads,
        "build": list(variants),
        "coco": {
            "images": str(coco / "val2017"),
            "annotations": str(coco / "annotations" / "instances_val2017.json"),
            "max_images": images,
            "image_ids_list": None,
        },
    }
    shutil.rmtree(workdir / "results" / run_id, ignore_errors=True)  # first: --out may lie inside it
    out.mkdir(parents=True, exist_ok=True)
    configfile = out / "bench-config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    snakemake(workdir, cores, configfile, CHECKPOINT)  # the seeded checkpoint: not part of the bench
    total = snakemake(workdir, cores, configfile)
    dry = snakemake(workdir, cores, configfile, dry=True)
    results = workdir / "results" / run_id
    marks = results / "benchmarks"
    rows = []
    timed = [(label, pattern, note, None) for label, pattern, note in RULES]
    timed += [(f"{label} {v}", pattern, note, v) for v in variants for label, pattern, note in VARIANT_RULES]
    for label, pattern, note, variant in timed:
        seconds = _seconds(marks / pattern.format(model=MODEL, variant=variant))
        if seconds is not None:
            rows.append({"what": label, "value": seconds, "unit": "s", "note": note})
    models = ["fp", *variants]
    latency = read_json(results / "latency" / f"{MODEL}.json")["models"]
    metrics = {name: read_json(results / "metrics" / f"{MODEL}-{name}.json") for name in models}
    fp_bytes = read_json(results / "onnx" / f"{MODEL}-fp.json")["bytes"]
    for name in models:
        rows.append({"what": f"latency {name}, batch 1 (median)", "value": latency[name]["median_ms"], "unit": "ms",
                     "note": f"{latency[name]['provider_used'].removesuffix('ExecutionProvider')}"})  # fmt: skip
    for name in models:
        evaluated = _seconds(marks / f"evaluate_coco/{MODEL}-{name}.tsv")
        per_image = evaluated / metrics[name]["images"] * 1000
        rows.append({"what": f"evaluate_coco {name} per image / model latency", "unit": "x",
                     "value": round(per_image / latency[name]["median_ms"], 2),
                     "note": f"{per_image:.0f} ms per image, whole job"})  # fmt: skip
    for name in variants:
        calibration = metrics[name].get("calibration") or {}
        if metrics[name].get("ptq_seconds") is not None:
            kinds = {"images": "real photos", "synthetic": "distilled images"}
            fitted = f"{calibration['count']} {kinds[calibration['source']]}" if calibration else "no images"
            rows.append({"what": f"PTQ inside quantize_weights {name}", "value": metrics[name]["ptq_seconds"],
                         "unit": "s", "note": f"the recipe alone, fitted to {fitted}"})  # fmt: skip
        int4 = results / "onnx" / f"{MODEL}-{name}-int4-ptq.json"
        if int4.is_file():
            packed = read_json(int4)["bytes"]
            rows.append({"what": f"INT4 file / FP32 file {name}", "value": round(packed / fp_bytes, 4), "unit": "x",
                         "note": f"{packed:,} / {fp_bytes:,} bytes"})  # fmt: skip
    rows.append({"what": f"whole workflow, snakemake --cores {cores}", "value": total, "unit": "s", "note": ""})
    rows.append({"what": "snakemake -n (nothing to do)", "value": dry, "unit": "s", "note": ""})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=workdir, capture_output=True, text=True)
    return {
        "rows": rows,
        "machine": machine(),
        "cores": cores,
        "threads": threads,
        "images": images,
        "variants": list(variants),
        "provider": metrics["fp"].get("provider_used"),
        "workdir": str(workdir),
        "commit": commit.stdout.strip() or "unknown",
        "config": config,
    }


def markdown(record: dict, before: dict | None = None) -> str:
    facts = record["machine"]
    lines = [
        f"Seeded YOLOv10m, `snakemake --cores {record['cores']}`, threads {record['threads']}, "
        f"{record['images']} val2017 images, variants {', '.join(record['variants'])}, provider {record['provider']}; "
        f"{facts['cpu']}, {facts['cpus']} CPUs, {facts['memory_gib']} GiB; commit {record['commit']}.",
        "",
    ]
    if before:
        old = {row["what"]: row for row in before["rows"]}
        lines += [f"| what | before ({before['commit']}) | after ({record['commit']}) | after / before | note |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for row in record["rows"]:
            previous = old.get(row["what"])
            value = previous["value"] if previous else None
            ratio = f"{row['value'] / value:.2f}" if value else "—"
            shown = f"{value} {row['unit']}" if value is not None else "—"
            lines.append(f"| {row['what']} | {shown} | {row['value']} {row['unit']} | {ratio} | {row['note']} |")
    else:
        lines += ["| what | value | note |", "|---|---|---|"]
        lines += [f"| {row['what']} | {row['value']} {row['unit']} | {row['note']} |" for row in record["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo_w4.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the checkout to run (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument(
        "--variant",
        nargs="+",
        default=["w4a16_rtn"],
        help="the recipes timed beside the FP baseline (config.yaml's build: w4a16 w4a16_g64_asym)",
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--before", type=Path, help="an earlier bench.json: adds a before/after table")
    args = parser.parse_args(argv)
    record = bench(args.workdir, args.out.resolve(), args.variant, args.cores, args.images, args.threads)
    before = read_json(args.before) if args.before else None
    if before:
        record["before"] = before
    text = markdown(record, before)
    write_json(args.out / "bench.json", record)
    with atomic_path(args.out / "bench.md") as tmp:
        tmp.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
