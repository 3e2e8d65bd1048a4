"""COCO scoring: our preprocessing/decoding against Ultralytics' predictor, COCOeval sanity, bootstrap."""

import json

import numpy as np
import pytest

from conftest import FALL_V8S, THUMIG, VAL_ANNOTATIONS, VAL_IMAGES, shared
from yolo_w4.bootstrap import PooledCurves, paired_bootstrap
from yolo_w4.checkpoint import load_detector
from yolo_w4.coco_subset import load_coco, read_id_list, select_image_ids, subset
from yolo_w4.decode import decode
from yolo_w4.errors import UserError
from yolo_w4.evaluate import coco_eval, coco_ground_truth, score
from yolo_w4.export import export_fp
from yolo_w4.preprocess import load_input
from yolo_w4.runtime import create_session, input_feed


@pytest.fixture(scope="module")
def val_subset():
    coco = load_coco(shared(*VAL_ANNOTATIONS))
    ids = select_image_ids(coco, 12)
    return subset(coco, ids), ids


def ground_truth_as_detections(coco):
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in coco["annotations"]
        if not a.get("iscrowd")
    ]


def test_ground_truth_scores_one_and_nothing_scores_zero(val_subset):
    coco, ids = val_subset
    perfect = score(coco, ground_truth_as_detections(coco), ids)
    assert perfect["mAP50_95"] == pytest.approx(1.0) and perfect["mAP50"] == pytest.approx(1.0)
    assert perfect["AR100"] == pytest.approx(1.0)
    empty = score(coco, [], ids)
    assert empty["mAP50_95"] == 0.0 and empty["AR100"] == 0.0


def test_agreement_with_itself_is_one_with_nothing_zero_and_with_a_shifted_model_between(val_subset):
    """Label-free agreement: the FP model's own detections (score >= conf) are the ground truth."""
    from yolo_w4.evaluate import pseudo_ground_truth

    coco, ids = val_subset
    rng = np.random.default_rng(0)
    fp = [{**d, "score": float(s)} for d, s in zip(ground_truth_as_detections(coco), rng.uniform(0.3, 1.0, 10**4))]
    fp += [{**d, "score": 0.01} for d in ground_truth_as_detections(coco)[::3]]  # low-score clutter, not truth
    pseudo = pseudo_ground_truth(coco, fp, conf=0.25)
    assert len(pseudo["annotations"]) == len(ground_truth_as_detections(coco)) and pseudo["images"] == coco["images"]
    assert score(pseudo, fp, ids)["mAP50_95"] == pytest.approx(1.0), "the FP model agrees with itself"
    assert score(pseudo, [], ids)["mAP50_95"] == 0.0, "an empty detector agrees with nothing"
    shifted = [{**d, "bbox": [d["bbox"][0] + 0.15 * d["bbox"][2], *d["bbox"][1:]]} for d in fp]
    partial = score(pseudo, shifted, ids)
    assert 0.2 < partial["mAP50_95"] < 0.8 and partial["mAP50"] > partial["mAP50_95"], partial


def test_half_the_boxes_lowers_recall(val_subset):
    coco, ids = val_subset
    half = ground_truth_as_detections(coco)[::2]
    result = score(coco, half, ids)
    assert 0.2 < result["AR100"] < 0.8 and result["mAP50_95"] < 1.0


def ultralytics_boxes(checkpoint, image, conf, **kwargs):
    from ultralytics import YOLO

    # rect=False: the square 640 letterbox Ultralytics also feeds a static-shape ONNX model
    model = YOLO(str(checkpoint))
    result = model.predict(str(image), conf=conf, imgsz=640, rect=False, device="cpu", verbose=False, **kwargs)[0]
    return result.boxes.xyxy.numpy(), result.boxes.conf.numpy(), result.boxes.cls.numpy().astype(int)


def our_boxes(onnx_path, image, head, conf):
    session, _ = create_session(onnx_path, "cpu")
    tensor, mapping = load_input(image)
    output = session.run(None, input_feed(session, tensor))[0]
    found = decode(output, head, mapping, conf=conf, iou=0.7, max_det=300)
    return found.boxes, found.scores, found.classes


@pytest.mark.parametrize(
    ("checkpoint", "head", "conf", "predict_args"),
    [(FALL_V8S, "one2many", 0.25, {"iou": 0.7}), (THUMIG, "one2one", 0.1, {"nms": False})],
    ids=["yolov8s-nms", "yolov10n-nms-free"],
)
def test_our_pipeline_gives_ultralytics_predictor_boxes(tmp_path, checkpoint, head, conf, predict_args):
    path = shared(*checkpoint)
    export_fp(load_detector(path, head).model, tmp_path / "fp.onnx")
    images = sorted(shared(*VAL_IMAGES).glob("*.jpg"))[:6]
    compared = 0
    for image in images:
        theirs = ultralytics_boxes(path, image, conf, **predict_args)
        ours = our_boxes(tmp_path / "fp.onnx", image, head, conf)
        assert len(ours[0]) == len(theirs[0]), image.name
        for box, box_score, cls in zip(*theirs):
            # NMS-free heads may give one box several classes: match within the same class
            distance = np.where(ours[2] == cls, np.abs(ours[0] - box).max(axis=1), np.inf)
            best = int((distance + 100 * np.abs(ours[1] - box_score)).argmin())
            assert distance[best] <= 1.0, (image.name, box, ours[0][best])
            assert abs(ours[1][best] - box_score) < 1e-3
            compared += 1
    assert compared >= 5, "the comparison must cover real detections"


def test_bootstrap_of_a_model_against_itself_is_zero(val_subset):
    coco, ids = val_subset
    gt = coco_ground_truth(coco)
    detections = ground_truth_as_detections(coco)[::2]
    a, b = coco_eval(gt, detections, ids), coco_eval(gt, detections, ids)
    interval = paired_bootstrap(a, b, resamples=30, seed=1)
    assert interval["low"] == interval["high"] == 0.0 and interval["images"] == len(ids)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_pooled_curves_reproduce_pycocotools(val_subset, step):
    coco, ids = val_subset
    gt = coco_ground_truth(coco)
    detections = ground_truth_as_detections(coco)[::step]
    for d, jitter in zip(detections, np.linspace(0, 9, len(detections))):  # imperfect boxes, varied scores
        d["bbox"] = [d["bbox"][0] + jitter, d["bbox"][1], d["bbox"][2], d["bbox"][3] + jitter / 2]
        d["score"] = 1.0 / (1.0 + jitter)
    curves = PooledCurves(coco_eval(gt, detections, ids))
    assert curves.map50_95() == pytest.approx(score(coco, detections, ids)["mAP50_95"], abs=1e-6)
    # An image counted twice weighs like two copies of it: compare with a COCO set holding the copy.
    twice = np.ones(len(ids))
    twice[0] = 2
    copy_id = max(ids) + 1
    image = next(i for i in coco["images"] if i["id"] == ids[0])
    doubled = {
        **coco,
        "images": coco["images"] + [{**image, "id": copy_id}],
        "annotations": coco["annotations"]
        + [
            {**a, "id": 10**9 + n, "image_id": copy_id}
            for n, a in enumerate(coco["annotations"])
            if a["image_id"] == ids[0]
        ],
    }
    copies = detections + [{**d, "image_id": copy_id} for d in detections if d["image_id"] == ids[0]]
    expected = score(doubled, copies, [*ids, copy_id])["mAP50_95"]
    assert curves.map50_95(twice) == pytest.approx(expected, abs=2e-3)


def test_bootstrap_is_seeded_and_brackets_a_real_difference(val_subset):
    coco, ids = val_subset
    gt = coco_ground_truth(coco)
    everything = ground_truth_as_detections(coco)
    good, worse = coco_eval(gt, everything, ids), coco_eval(gt, everything[::2], ids)
    first = paired_bootstrap(good, worse, resamples=40, seed=3)
    assert first == paired_bootstrap(good, worse, resamples=40, seed=3)
    assert first["high"] < 0, "dropping half the boxes must lower mAP on every resample"


def test_id_list_with_comments(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# chosen images\n139  # a kitchen\n\n285\n")
    assert read_id_list(path) == [139, 285]
    path.write_text("139\nabc\n")
    with pytest.raises(UserError, match=r"ids.txt:2: 'abc' is not an image id"):
        read_id_list(path)


def test_first_n_ids_in_sorted_order():
    coco = {"images": [{"id": 9}, {"id": 2}, {"id": 5}], "annotations": [], "categories": []}
    assert select_image_ids(coco, 2) == [2, 5]


def test_not_coco_json(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="is not a COCO detection annotation file"):
        load_coco(path)


@pytest.mark.parametrize(
    ("images", "annotations", "message"),
    [
        (
            [{"id": 1}, {"id": 2}, {"id": 1}],
            [],
            "lists image id 1 more than once (1 ids repeated); each image must appear once",
        ),
        (
            [{"id": 1}],
            [{"image_id": 1}, {"image_id": 7}],
            "has annotations for image id 7, which its images list lacks (1 such ids)",
        ),
    ],
)
def test_annotation_file_with_repeated_or_missing_image_ids_is_refused(tmp_path, images, annotations, message):
    """A repeated id would be scored twice; an annotation for an absent image would never be matched."""
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    with pytest.raises(UserError) as raised:
        load_coco(path)
    assert str(raised.value) == f"{path} {message}"


def test_truncated_jpeg_is_refused_not_partly_scored(coco_photo_path, tmp_path):
    """OpenCV decodes half a JPEG with only a libjpeg warning on the terminal; we refuse it."""
    from yolo_w4.preprocess import read_image

    data = coco_photo_path.read_bytes()
    assert read_image(coco_photo_path).shape[2] == 3
    cut = tmp_path / coco_photo_path.name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as raised:
        read_image(cut)
    assert str(raised.value) == (
        f"{cut} is truncated (JPEG without its end-of-image marker); re-download or remove it, a partly decoded image would be scored"
    )


@pytest.fixture
def coco_photo_path(val_images):
    return val_images[0]


@pytest.mark.parametrize(
    ("checkpoint", "head", "conf"),
    [(FALL_V8S, "one2many", 0.25), (THUMIG, "one2one", 0.1)],
    ids=["yolov8s-nms", "yolov10n-nms-free"],
)
def test_ultralytics_reads_our_onnx_files_as_a_client(tmp_path, checkpoint, head, conf):
    """YOLO("ours.onnx").predict: the checkpoint's class names, and our evaluator's boxes within 1 px.

    The metadata says whether the head is NMS-free: on the one2one file Ultralytics must not
    run NMS over the (1, 300, 6) output, so it keeps exactly the rows above conf that we keep.
    """
    from ultralytics import YOLO

    from yolo_w4.config import default_recipe
    from yolo_w4.steps_onnxruntime import pack_step
    from yolo_w4.steps_torch import export_step, quantize_step

    path = shared(*checkpoint)
    names = load_detector(path, head).names
    export_step(path, tmp_path / "fp.onnx", tmp_path / "fp.json", precision="fp32", head=head, imgsz=640)
    quantize_step(path, tmp_path / "w4.pt", "w4a16_rtn", default_recipe(), head=head, imgsz=640, device="cpu")
    export_step(
        path,
        tmp_path / "w4.onnx",
        tmp_path / "w4.json",
        quantized=tmp_path / "w4.pt",
        precision="fp32",
        head=head,
        imgsz=640,
    )
    pack_step(tmp_path / "w4.onnx", tmp_path / "w4-int4.onnx", tmp_path / "w4-int4.json")
    images = sorted(shared(*VAL_IMAGES).glob("*.jpg"))[:4]
    compared = 0
    for name in ("fp.onnx", "w4.onnx", "w4-int4.onnx"):
        client = YOLO(str(tmp_path / name), task="detect")
        for image in images:
            result = client.predict(str(image), conf=conf, imgsz=640, rect=False, device="cpu", verbose=False)[0]
            assert result.names == names, name
            theirs = result.boxes.xyxy.numpy(), result.boxes.conf.numpy(), result.boxes.cls.numpy().astype(int)
            ours = our_boxes(tmp_path / name, image, head, conf)
            assert len(ours[0]) == len(theirs[0]), (name, image.name)
            for box, box_score, cls in zip(*theirs):
                distance = np.where(ours[2] == cls, np.abs(ours[0] - box).max(axis=1), np.inf)
                best = int((distance + 100 * np.abs(ours[1] - box_score)).argmin())
                assert distance[best] <= 1.0 and abs(ours[1][best] - box_score) < 1e-3, (name, image.name, box)
                compared += 1
    assert compared >= 5, "the comparison must cover real detections"
    import onnx

    from yolo_w4.onnx_graph import read_metadata
    from yolo_w4.provenance import sha256

    packed = read_metadata(onnx.load(str(tmp_path / "w4-int4.onnx")))
    assert packed["yolo_w4_format"] == "int4" and packed["yolo_w4_variant"] == "w4a16_rtn"
    assert packed["yolo_w4_checkpoint_sha256"] == sha256(path) and packed["end2end"] == str(head == "one2one")
    assert 4.0 < float(packed["yolo_w4_bits_per_weight"]) < 4.2, "4-bit weights plus one FP32 scale per channel"
    assert packed["yolo_w4_recipe"].startswith("W4 rtn, minmax sym narrow")
    fp = read_metadata(onnx.load(str(tmp_path / "fp.onnx")))
    assert float(fp["yolo_w4_bits_per_weight"]) == 32.0 and fp["yolo_w4_recipe"] == "FP (no quantization)"


def test_the_deltas_table_says_n_a_where_there_is_no_interval_to_give():
    """No delta (no labels scored), or a single image (nothing to resample): no [0.0000, 0.0000] pretending to be one."""
    from yolo_w4.deltas import COMPACT_COLUMNS, SUMMARY_COLUMNS, summary_table

    def row(variant, delta, low, high, images):
        return {"variant": variant, "mAP50_95": 0.3, "delta_mAP50_95": delta, "delta_mAP50_95_ci_low": low,
                "delta_mAP50_95_ci_high": high, "images": images, "retained_pct_mAP50_95": 90.0,
                "size_ratio": 0.14, "latency_ratio": 1.0}  # fmt: skip

    rows = [row("w4", -0.03, -0.04, -0.02, 100), row("none", None, 0.0, 0.0, 100), row("one", -0.03, 0.0, 0.0, 1)]
    header, cells = summary_table(rows, COMPACT_COLUMNS)
    delta = header.index("Δ [95% CI]")
    assert [c[delta] for c in cells] == ["-0.030 [-0.040, -0.020]", "n/a", "-0.030 n/a: too few images"]
    interval = dict(SUMMARY_COLUMNS)["95% CI of Δ"]
    assert [interval(r) for r in rows] == ["[-0.0400, -0.0200]", "n/a", "n/a: too few images"]


def test_report_says_that_weights_under_4_bits_are_stored_as_int4():
    from yolo_w4.names import FP
    from yolo_w4.steps_report import report_notes

    base = {"images": 4, "image_ids_sha256": "0" * 64, "head": "one2one", "conf": 0.001, "iou": None,
            "provider_used": "CPUExecutionProvider", "precision": "fp32"}  # fmt: skip
    metrics = {FP: base, "w4a16": {**base, "weight_bits": 4}, "w3a16": {**base, "weight_bits": 3}}
    latency = {"method": "interleaved", "images": ["a.jpg"], "rounds": 1,
               "models": {name: {"provider_used": "CPUExecutionProvider"} for name in metrics}}  # fmt: skip
    notes = [n for n in report_notes(metrics, latency, 10) if "stored as INT4" in n]
    assert notes and notes[0].startswith("w3a16: fewer than 4 bits per integer") and "w4a16" not in notes[0]
