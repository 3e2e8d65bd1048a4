"""The Snakemake workflow end to end on a small config, its lint, and its bad-input errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, VAL_ANNOTATIONS, VAL_IMAGES, shared

TRAIN_IMAGES = ("coco2017", "source-data", "train2017")
TRAIN_ANNOTATIONS = ("coco2017", "source-data", "annotations", "instances_train2017.json")

pytestmark = pytest.mark.workflow
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--cores", "1"]


def snakemake(*args, config: dict | None = None, tmp_path: Path | None = None):
    command = [*SNAKEMAKE, *args]
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        command += ["--configfile", str(path)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def small_config(run_id: str, **overrides) -> dict:
    """Seeded YOLOv10n on 4 real COCO val2017 images, quick bootstrap and timing."""
    config = {
        "run_id": run_id,
        "checkpoint": "results/seeded/yolov10n-seed0.pt",
        "coco": {"images": str(shared(*VAL_IMAGES)), "annotations": str(shared(*VAL_ANNOTATIONS)), "max_images": 4},
        "bootstrap": {"resamples": 50},
        "latency": {"images": 2, "rounds": 2},
    }
    return {**config, **overrides}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real run: seeded YOLOv10n, a real COCO photo, the default w4a16 plus a w8a16 variant."""
    tmp_path = tmp_path_factory.mktemp("workflow")
    run_id = "pytest-workflow"
    shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)
    photo = sorted(shared(*VAL_IMAGES).glob("*.jpg"))[0]
    calibrated = {
        "method": "gptq",
        "scale": "output",
        "bias_correction": "empirical",
        "mixed": {"min_4bit_fraction": 0.9, "high_bits": 8},
    }
    config = small_config(
        run_id,
        smoke={"image": str(photo), "runs": 3, "warmup": 1},
        build=["w4a16", "w8a16", "w4a16_mixed", "w4a16_bn", "w4a16_datafree"],  # the rest from the catalog
        # a recipe added to the catalog by a user's config, and a catalog entry changed by it (group-wise)
        variants={"w4a16_mixed": calibrated, "w4a16_bn": {"group_size": 32}},
        calibration={
            "images": str(shared(*TRAIN_IMAGES)),
            "annotations": str(shared(*TRAIN_ANNOTATIONS)),
            "max_images": 4,
            "sensitivity_images": 2,
            "synthetic": {"images": 2, "imgsz": 64, "steps": 3},
        },
    )
    result = snakemake(config=config, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    yield ROOT / "results" / run_id, config, tmp_path
    shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)


def test_run_writes_every_artifact(run):
    results, _, _ = run
    model = "yolov10n-seed0"
    for variant in ("w4a16", "w8a16"):
        assert (results / "quantized" / f"{model}-{variant}-ptq.pt").is_file()
        assert (results / "onnx" / f"{model}-{variant}-qcdq-ptq.onnx").is_file()
        assert (results / "logs" / "quantize_weights" / f"{model}-{variant}.log").is_file()
        assert (results / "benchmarks" / "quantize_weights" / f"{model}-{variant}.tsv").is_file()
    assert (results / "onnx" / f"{model}-fp.onnx").is_file()
    runtime = json.loads((results / "runtime" / "onnxruntime.json").read_text())
    fp = json.loads((results / "onnx" / f"{model}-fp.json").read_text())
    assert fp["precision"] == runtime["precision"], (
        "the FP export follows the probe made in the env that runs the models"
    )
    if "CUDAExecutionProvider" not in runtime["providers_compiled_in"]:
        assert runtime["provider_used"] == "CPUExecutionProvider" and runtime["precision"] == "fp32"
        assert runtime["cuda_reason"].endswith("has no CUDA provider (install onnxruntime-gpu)")
    packed = sorted(p.name for p in (results / "onnx").glob("*-int4-ptq.onnx"))
    assert packed == [f"{model}-{v}-int4-ptq.onnx" for v in ("w4a16", "w4a16_bn", "w4a16_datafree", "w4a16_mixed")], (
        "8-bit variants have nothing to pack"
    )
    assert sorted(p.name for p in (results / "smoke").iterdir()) == [
        f"{model}-fp.json",
        f"{model}-w4a16.json",
        f"{model}-w4a16_bn.json",
        f"{model}-w4a16_datafree.json",
        f"{model}-w4a16_mixed.json",
        f"{model}-w8a16.json",
    ]


def test_export_records_clip_ranges_and_node_counts(run):
    results, _, _ = run
    w4 = json.loads((results / "onnx" / "yolov10n-seed0-w4a16-qcdq-ptq.json").read_text())
    w8 = json.loads((results / "onnx" / "yolov10n-seed0-w8a16-qcdq-ptq.json").read_text())
    assert w4["weight_clip_ranges"] == [[-7, 7]] and w8["weight_clip_ranges"] == [[-127, 127]]
    assert w4["node_counts"]["DequantizeLinear"] == w4["node_counts"]["Clip"] == w4["node_counts"]["Conv"] - 1
    assert w4["inputs"]["checkpoint"]["sha256"] == w4["checkpoint"]["sha256"]
    assert w4["settings"]["weight_bits"] == 4 and w4["settings"]["method"] == "gptq"


def test_group_wise_variant_exports_blocked_dequantize_and_matches_pytorch(run):
    """w4a16_bn laid over with group_size 32 by the run's config: opset 21 blocked DequantizeLinear."""
    results, _, _ = run
    export = json.loads((results / "onnx" / "yolov10n-seed0-w4a16_bn-qcdq-ptq.json").read_text())
    assert export["settings"]["group_size"] == 32 and export["settings"]["bias_correction"] == "bn"
    assert export["opset"] == 21 and 4.5 <= export["bits_per_weight"] < 4.6
    assert {clip["block_size"] for clip in export["weight_clips"]} >= {32}
    smoke = json.loads((results / "smoke" / "yolov10n-seed0-w4a16_bn.json").read_text())
    assert smoke["parity"]["sqnr_db"] >= 80, smoke["parity"]
    packed = json.loads((results / "onnx" / "yolov10n-seed0-w4a16_bn-int4-ptq.json").read_text())
    assert packed["parity_vs_qcdq"]["max_abs_diff"] == 0.0


def test_smoke_json_says_what_ran_and_how_close_it_is(run):
    results, config, _ = run
    for variant in ("fp", "w4a16"):
        smoke = json.loads((results / "smoke" / f"yolov10n-seed0-{variant}.json").read_text())
        assert smoke["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert smoke["provider_used"] == "CPUExecutionProvider" == smoke["providers_used"][0]
        assert smoke["precision"] == "fp32"
        assert smoke["model_io"]["inputs"][0] == {"name": "images", "shape": [1, 3, 640, 640], "type": "tensor(float)"}
        assert smoke["model_io"]["outputs"][0]["shape"] == [1, 300, 6]
        assert smoke["latency"]["runs"] == 3 and 0 < smoke["latency"]["median_ms"] <= smoke["latency"]["p90_ms"]
        assert smoke["parity"]["sqnr_db"] >= 80, smoke["parity"]
        assert smoke["detections"]["image"] == config["smoke"]["image"]
        assert smoke["inputs"]["image"]["sha256"] and smoke["checkpoint"]["random_weights"] is True
        assert smoke["versions"]["brevitas"] == "0.13.4"
        if "CUDAExecutionProvider" not in smoke["providers_available"]:
            assert "no CUDA provider (install onnxruntime-gpu)" in smoke["cuda_reason"], "why CUDA was not used"


def test_report_says_why_cuda_was_not_used(run):
    results, _, _ = run
    fp = json.loads((results / "metrics" / "yolov10n-seed0-fp.json").read_text())
    if fp["provider_used"] == "CUDAExecutionProvider":
        pytest.skip("CUDA ran here")
    deltas = (results / "report" / "deltas.md").read_text()
    assert f"CUDA was asked for (device: auto) but not used: {fp['cuda_reason']}." in deltas
    assert "Not comparable like for like" not in deltas, "every model ran on the same provider and precision"
    assert "Every model was scored and timed with ONNX Runtime CPU, fp32." in deltas


def test_second_run_has_nothing_to_do(run):
    _, config, tmp_path = run
    result = snakemake("-n", config=config, tmp_path=tmp_path)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_is_clean():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint", "--configfile", "config/demo.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"colour": "red"}, "error: invalid config at (top level): unknown key: "),
        ({"imgsz": 100}, "error: invalid config at imgsz: 100 is not a multiple of 32"),
        ({"device": "gpu"}, "error: invalid config at device: 'gpu' is not one of"),
        ({"variants": {"w3": {"weight_bits": 1}}}, "error: invalid config at variants.w3.weight_bits: 1 is less than"),
        ({"variants": {"fp": {}}}, "error: invalid config at variants: the name fp is reserved for the FP baseline"),
        (
            {"build": ["w4a16", "w5"]},
            "error: invalid config at build: w5 is not a recipe in `variants` (the catalog has ",
        ),
        (
            {"variants": {"w4m": {"mixed": {"min_4bit_fraction": 0.9}}}},
            "error: invalid config at variants.w4m.mixed: 'high_bits' is a required",
        ),
        (
            {"checkpoint": "models/yolo{v10}m.pt"},
            "error: checkpoint: models/yolo{v10}m.pt contains { or }, which Snakemake reads",
        ),
        (
            {"variants": {"w4": {"method": "adaround", "bias_correction": "empirical"}}},
            "error: invalid config at variants.w4: method adaround cannot be combined with bias_correction: empirical",
        ),
        ({"checkpoint": "models/none.pt"}, "error: checkpoint not found: models/none.pt"),
        (
            {"coco": {"images": "results", "annotations": None, "max_images": 4, "image_ids_list": "ids.txt"}},
            "error: invalid config at coco.image_ids_list: ids are COCO image ids, which need coco.annotations",
        ),
        (
            {"variants": {"w4k": {"keep_float": ["model.0.conv", "*"]}}},
            "error: invalid config at variants.w4k.keep_float: '*' matches every layer name, so no conv is left",
        ),
        (  # small_config evaluates the first 4 val ids: 139 is the first, 9999 not among them
            {"report": {"image_id": 9999}},
            "error: report.image_id 9999 is not an image of the evaluation subset (the subset's ids are 139…",
        ),
        (
            {
                "report": {"image_id": 5},
                "coco": {"images": str(shared(*VAL_IMAGES)), "annotations": None, "max_images": 4},
            },
            "error: report.image_id 5 is not an image of the evaluation subset (the label-free subset numbers its 4",
        ),
    ],
)
def test_bad_config_fails_before_any_job_with_one_line(tmp_path, override, message):
    config = small_config("pytest-bad-config", **override)
    result = snakemake(config=config, tmp_path=tmp_path)
    assert result.returncode != 0
    assert error_lines(result) == [error_lines(result)[0]] and error_lines(result)[0].startswith(message), result.stderr
    assert not (ROOT / "results" / "pytest-bad-config").exists()


def test_metrics_json_for_fp_and_every_variant(run):
    results, _, _ = run
    ids = (results / "coco" / "image_ids.txt").read_text().split()
    assert len(ids) == 4 and ids == sorted(ids, key=int)
    for variant in ("fp", "w4a16", "w8a16"):
        metrics = json.loads((results / "metrics" / f"yolov10n-seed0-{variant}.json").read_text())
        assert set(metrics["metrics"]) >= {"mAP50_95", "mAP50", "mAP75", "AR100", "AR_large"}
        assert len(metrics["metrics"]) == 12
        assert metrics["images"] == 4 and metrics["head"] == "one2one" and metrics["iou"] is None
        assert metrics["provider_used"] == "CPUExecutionProvider" and metrics["precision"] == "fp32"
        assert len(metrics["latency_ms"]["per_image"]) == 4
        assert metrics["inputs"]["image_ids"]["sha256"] == metrics["image_ids_sha256"]
        detections = json.loads((results / "metrics" / f"yolov10n-seed0-{variant}-detections.json").read_text())
        assert {d["image_id"] for d in detections} <= {int(i) for i in ids}
    w4 = json.loads((results / "metrics" / "yolov10n-seed0-w4a16.json").read_text())
    assert w4["weights_4bit_fraction"] == 1.0 and w4["weight_bits"] == 4


def test_deltas_table_has_a_row_per_model_and_the_report_shows_it(run, tmp_path):
    import csv

    results, config, config_dir = run
    rows = list(csv.DictReader((results / "report" / "deltas.csv").open()))
    assert rows[0]["variant"] == "fp" and float(rows[0]["agreement_mAP50_95"]) == pytest.approx(1.0)
    assert all(0 <= float(row["agreement_mAP50_95"]) <= 1 for row in rows[1:]), "label-free agreement per variant"
    assert sorted(row["variant"] for row in rows[1:]) == [
        "w4a16",
        "w4a16_bn",
        "w4a16_datafree",
        "w4a16_mixed",
        "w8a16",
    ], "config-added variants are new rows"
    fp, w4 = rows[0], next(row for row in rows if row["variant"] == "w4a16")
    assert float(w4["delta_mAP50_95"]) == pytest.approx(float(w4["mAP50_95"]) - float(fp["mAP50_95"]), abs=1e-6)
    assert float(w4["delta_mAP50_95_ci_low"]) <= float(w4["delta_mAP50_95_ci_high"])
    assert all(float(row["size_ratio"]) < 0.35 for row in rows[1:])
    packed = json.loads((results / "onnx" / "yolov10n-seed0-w4a16-int4-ptq.json").read_text())
    assert packed["parity_vs_qcdq"]["max_abs_diff"] == 0.0 and packed["layers_kept_int8"] == 0
    assert packed["inputs"]["qcdq"]["sha256"] and packed["versions"]["onnx"]
    assert int(w4["int4_bytes"]) == packed["bytes"] < 0.6 * int(w4["onnx_bytes"])
    assert float(w4["size_ratio"]) == pytest.approx(packed["bytes"] / int(fp["onnx_bytes"]), abs=1e-4)
    assert next(row for row in rows if row["variant"] == "w8a16")["int4_bytes"] == "", "nothing packed at 8 bits"
    assert w4["provider"] == "CPUExecutionProvider"
    deltas = json.loads((results / "report" / "deltas.json").read_text())
    from yolo_w4.provenance import sha256

    for source in ("metrics/fp", "metrics/w4a16", "detections/w4a16", "export/w4a16", "int4/w4a16", "latency"):
        assert deltas["inputs"][source]["sha256"] == sha256(ROOT / deltas["inputs"][source]["path"]), source
    assert (
        deltas["image_ids_sha256"]
        == json.loads((results / "metrics" / "yolov10n-seed0-fp.json").read_text())["image_ids_sha256"]
    )
    commit = deltas["versions"]["yolo_w4_commit"]
    assert commit == "not a git checkout" or len(commit.removesuffix("+dirty")) == 40
    page = (results / "report" / "deltas.html").read_text()
    assert "RANDOM WEIGHTS" in page and f"{float(w4['mAP50_95']):.3f}" in page
    for name in ("map.png", "size_vs_map.png", "latency.png", "detections/yolov10n-seed0-w4a16.png"):
        assert (results / "report" / name).stat().st_size > 5000
    report = results / "report.html"
    result = snakemake("--report", str(report), config=config, tmp_path=config_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    assert "Deltas against the FP baseline" in text and f"{float(w4['mAP50_95']):.3f}" in text
    assert "RANDOM WEIGHTS" in text
    categories = json.loads(text.split("var categories = ", 1)[1].split(";\n", 1)[0])
    assert sorted(categories) == ["1. Deltas vs FP", "2. Plots", "3. Detections", "4. Sensitivity", "5. Calibration"], (
        "real and synthetic calibration in one run: every category, numbered in reading order"
    )


@pytest.mark.parametrize(
    ("coco", "message"),
    [
        ({"annotations": "missing/instances.json"}, "error: annotations not found: missing/instances.json"),
        ({"annotations": "README.md"}, "error: README.md is not JSON"),
        ({"annotations": "config/config.yaml"}, "error: config/config.yaml is not JSON"),
        ({"image_ids_list": "IDS_UNKNOWN"}, "image ids are not in"),
        ({"image_ids_list": "IDS_EMPTY"}, "lists no image ids"),
        ({"images": "IMAGES_PARTIAL"}, "error: image not found: "),
        ({"max_images": 0}, "error: invalid config at coco.max_images: 0 is less than the minimum of 1"),
        ({"annotations": None, "images": "IMAGES_EMPTY"}, "holds no image files (.jpg, .jpeg"),
    ],
)
def test_bad_coco_input_is_one_line_and_leaves_no_metrics(tmp_path, coco, message):
    (tmp_path / "unknown.txt").write_text("# not in val2017\n139\n1\n")
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    partial = tmp_path / "images"
    partial.mkdir()
    (tmp_path / "empty").mkdir()
    first = sorted(shared(*VAL_IMAGES).glob("*.jpg"))[0]
    (partial / first.name).symlink_to(first)
    aliases = {
        "IDS_UNKNOWN": str(tmp_path / "unknown.txt"),
        "IDS_EMPTY": str(tmp_path / "empty.txt"),
        "IMAGES_PARTIAL": str(partial),
        "IMAGES_EMPTY": str(tmp_path / "empty"),
    }
    coco = {key: aliases.get(value, value) for key, value in coco.items()}
    run_id = "pytest-bad-coco"
    config = small_config(run_id)
    config["coco"] = {**config["coco"], **coco}
    try:  # the subset is the first thing every evaluation needs: ask for it alone, to keep this quick
        result = snakemake(f"results/{run_id}/coco/image_ids.txt", config=config, tmp_path=tmp_path)
        assert result.returncode != 0
        lines = error_lines(result)
        assert lines and message in lines[0], result.stderr[-2000:]
        assert not list((ROOT / "results" / run_id).glob("metrics/*.json"))
        assert not (ROOT / "results" / run_id / "coco" / "image_ids.txt").exists()
    finally:
        shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)


def test_calibrated_mixed_variant_uses_the_sensitivity_ranking_and_its_budget(run):
    import csv

    import torch

    results, _, _ = run
    ranking = list(csv.DictReader((results / "sensitivity" / "yolov10n-seed0.csv").read_text().splitlines()))
    assert ranking and ranking[0]["rank"] == "1" and "model.23.dfl.conv" not in {r["layer"] for r in ranking}
    calibration = json.loads((results / "calibration" / "images.json").read_text())
    eval_ids = [int(i) for i in (results / "coco" / "image_ids.txt").read_text().split()]
    assert len(calibration["ids"]) == 4 and not set(calibration["ids"]) & set(eval_ids)
    saved = torch.load(results / "quantized" / "yolov10n-seed0-w4a16_mixed-ptq.pt", weights_only=True)
    eight_bit = saved["settings"]["layer_bits"]
    assert eight_bit and set(eight_bit.values()) == {8}
    assert set(eight_bit) <= {r["layer"] for r in ranking}
    assert saved["settings"]["calibration_image_count"] == 4
    assert any(layer["weights_changed"] for layer in saved["calibration"].values()), "GPTQ changed weights"
    metrics = json.loads((results / "metrics" / "yolov10n-seed0-w4a16_mixed.json").read_text())
    assert 0.9 <= metrics["weights_4bit_fraction"] < 1.0 and metrics["ptq_seconds"] > 0
    export = json.loads((results / "onnx" / "yolov10n-seed0-w4a16_mixed-qcdq-ptq.json").read_text())
    assert export["weight_clip_ranges"] == [[-127, 127], [-7, 7]]
    packed = json.loads((results / "onnx" / "yolov10n-seed0-w4a16_mixed-int4-ptq.json").read_text())
    assert packed["layers_kept_int8"] == len(eight_bit) and packed["parity_vs_qcdq"]["max_abs_diff"] == 0.0


def test_data_free_variant_needs_no_calibration_images(run):
    import torch

    results, _, _ = run
    saved = torch.load(results / "quantized" / "yolov10n-seed0-w4a16_bn-ptq.pt", weights_only=True)
    assert "calibration_image_count" not in saved["settings"]
    corrected = [name for name, record in saved["calibration"].items() if record.get("bn_bias_shift_max", 0) > 0]
    assert len(corrected) >= 10, "YOLOv10n convs fed directly by Conv blocks get a BN-derived correction"


def test_data_free_variant_calibrates_on_distilled_images_only(run):
    """w4a16_datafree (config/config.yaml) reads no photo: GPTQ on images distilled from the checkpoint."""
    import torch

    results, _, _ = run
    synthetic = torch.load(results / "calibration" / "yolov10n-seed0-synthetic.pt", weights_only=True)
    assert synthetic["images"].dtype == torch.uint8 and tuple(synthetic["images"].shape) == (2, 3, 64, 64)
    assert len(synthetic["inputs"]["checkpoint"]["sha256"]) == 64 and synthetic["settings"]["steps"] == 3
    assert (results / "calibration" / "yolov10n-seed0-synthetic.png").stat().st_size > 1000
    saved = torch.load(results / "quantized" / "yolov10n-seed0-w4a16_datafree-ptq.pt", weights_only=True)
    assert saved["settings"]["calibration_source"] == "synthetic" and saved["settings"]["calibration_image_count"] == 2
    assert (
        saved["settings"]["ptq_seconds"] >= saved["settings"]["synthesis_seconds"] == synthetic["settings"]["seconds"]
    )
    from yolo_w4.provenance import sha256

    assert saved["settings"]["synthetic_images_sha256"] == sha256(
        results / "calibration" / "yolov10n-seed0-synthetic.pt"
    )
    assert any(layer["weights_changed"] for layer in saved["calibration"].values()), "GPTQ changed weights"
    metrics = json.loads((results / "metrics" / "yolov10n-seed0-w4a16_datafree.json").read_text())
    assert "synthetic images" in metrics["settings"] and metrics["calibration"]["source"] == "synthetic"


def test_without_annotations_every_model_is_scored_by_agreement_with_fp(tmp_path):
    """coco.annotations: null, the trained YOLOv5n on a folder of photos: no mAP anywhere, agreement only."""
    import csv

    run_id = "pytest-label-free"
    shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)
    images = shared(*VAL_IMAGES)
    config = small_config(
        run_id,
        checkpoint=str(shared("models", "yolov5n-v6.1-coco-legacy.pt")),
        head="one2many",
        coco={"images": str(images), "annotations": None, "max_images": 6, "image_ids_list": None},
        build=["w4a16_rtn", "w8a16"],
        smoke={"image": None, "runs": 2, "warmup": 1, "conf": 0.25},
    )
    try:
        result = snakemake(config=config, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        results = ROOT / "results" / run_id
        subset = json.loads((results / "coco" / "annotations.json").read_text())
        assert subset["label_free"] and subset["annotations"] == []
        first = sorted(p.name for p in images.iterdir() if p.suffix == ".jpg")[:6]
        assert [(i["id"], i["file_name"]) for i in subset["images"]] == list(enumerate(first, 1))
        fp = json.loads((results / "metrics" / "yolov5n-v6.1-coco-legacy-fp.json").read_text())
        assert set(fp["metrics"].values()) == {None} and fp["labels"].startswith("none")
        assert [c["name"] for c in fp["categories"]][:3] == ["person", "bicycle", "car"]
        rows = {row["variant"]: row for row in csv.DictReader((results / "report" / "deltas.csv").open())}
        assert float(rows["fp"]["agreement_mAP50_95"]) == 1.0 and rows["fp"]["mAP50_95"] == ""
        w8, w4 = (float(rows[name]["agreement_mAP50_95"]) for name in ("w8a16", "w4a16_rtn"))
        assert 0.8 < w8 < 1.0 and w4 < w8, "8-bit weights reproduce FP far better than per-channel 4-bit rounding"
        low, high = float(rows["w4a16_rtn"]["agreement_ci_low"]), float(rows["w4a16_rtn"]["agreement_ci_high"])
        assert 0 <= low <= w4 <= high <= 1
        table = (results / "report" / "deltas.md").read_text()
        header = table.splitlines()[0]
        assert "agreement mAP50-95" in header and "| mAP50-95 |" not in header and "Δ" not in header
        assert "No annotations (coco.annotations: null)" in table
        assert (results / "report" / "detections" / "yolov5n-v6.1-coco-legacy-w4a16_rtn.png").stat().st_size > 5000
    finally:
        shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)


@pytest.mark.parametrize("labelled", [True, False], ids=["COCO folder", "own photos, no labels"])
def test_default_build_calibrates_on_the_evaluation_folders_other_photos(tmp_path, labelled):
    """A config naming only a checkpoint and a photo folder: both default recipes (config.yaml's `build`)
    calibrate on the folder's photos after the evaluation subset, never on one of its images."""
    import torch

    run_id = f"pytest-default-build-{'coco' if labelled else 'own'}"
    shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)
    images = shared(*VAL_IMAGES)
    coco = {"images": str(images), "annotations": str(shared(*VAL_ANNOTATIONS)) if labelled else None, "max_images": 2}
    config = {**small_config(run_id, coco=coco, calibration={"max_images": 3}), "imgsz": 64}
    build = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["build"]
    assert build == ["w4a16", "w4a16_g64_asym"], "the default build: per channel and asymmetric groups of 64"
    results = ROOT / "results" / run_id
    targets = [f"{results.relative_to(ROOT)}/quantized/yolov10n-seed0-{v}-ptq.pt" for v in build]
    try:
        result = snakemake(*targets, config=config, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        subset = json.loads((results / "coco" / "annotations.json").read_text())
        evaluated = {image["file_name"] for image in subset["images"]}
        if labelled:  # id order: COCO file names are the ids
            expected = sorted(i["id"] for i in json.loads(shared(*VAL_ANNOTATIONS).read_text())["images"])[2:5]
        else:
            expected = [p.name for p in sorted(images.glob("*.jpg"))[2:5]]
        for variant in build:
            settings = torch.load(results / "quantized" / f"yolov10n-seed0-{variant}-ptq.pt", weights_only=True)[
                "settings"
            ]
            photos = settings["calibration_photos"]
            assert settings["calibration_source"] == "images" and settings["calibration_image_count"] == 3
            assert settings["calibration_source_reason"].startswith("auto: real photos, since ")
            assert photos["images"] == str(images) and photos["rule"].startswith("no calibration photo is")
            assert (photos["ids"] if labelled else photos["file_names"]) == expected, variant
        record = json.loads((results / "calibration" / "images.json").read_text())
        assert not set(record["file_names"]) & evaluated and len(record["file_names"]) == 3
    finally:
        shutil.rmtree(ROOT / "results" / run_id, ignore_errors=True)
