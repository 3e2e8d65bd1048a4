"""The legacy github ultralytics/yolov5 checkpoint (our COCO-trained accuracy proxy)."""

import pytest
import torch

from conftest import VAL_ANNOTATIONS, VAL_IMAGES, shared
from yolo_w4.checkpoint import load_detector
from yolo_w4.errors import UserError

YOLOV5N = ("models", "yolov5n-v6.1-coco-legacy.pt")


def test_yolov5_pickle_loads_without_the_yolov5_source():
    import sys

    detector = load_detector(shared(*YOLOV5N), "one2many")
    assert detector.layout == "yolov5-legacy" and len(detector.names) == 80 and detector.names[0] == "person"
    assert not any(name == "models" or name.startswith("models.") for name in sys.modules), "no stray modules left"
    with torch.no_grad():
        output = detector.model(torch.zeros(1, 3, 640, 640))
    assert output.shape == (1, 84, 25200), "one2many contract: xywh + 80 class scores, 3 anchors x 8400 cells"
    assert not [m for m in detector.model.modules() if isinstance(m, torch.nn.BatchNorm2d)], "Conv+BN fused"


def test_yolov5_has_no_nms_free_head():
    with pytest.raises(UserError, match="no one-to-one"):
        load_detector(shared(*YOLOV5N), "one2one")


def test_yolov5n_fp_map_on_the_shared_val_images_is_the_published_level(tmp_path):
    """0.30 mAP50-95 on the 158 val2017 images (the checkpoint's own report: 28.0 on all 5,000)."""
    from yolo_w4.coco_subset import load_coco, select_image_ids
    from yolo_w4.evaluate import category_ids, score, to_coco_results
    from yolo_w4.export import export_fp
    from yolo_w4.runtime import create_session, predict_images

    detector = load_detector(shared(*YOLOV5N), "one2many")
    export_fp(detector.model, tmp_path / "yolov5n.onnx")
    coco = load_coco(shared(*VAL_ANNOTATIONS))
    ids = select_image_ids(coco, 1000)
    assert len(ids) == 158
    files = {image["id"]: shared(*VAL_IMAGES) / image["file_name"] for image in coco["images"]}
    session, _ = create_session(tmp_path / "yolov5n.onnx", "cpu")
    found, _ = predict_images(session, [files[i] for i in ids], "one2many", 640, 0.001, 0.65, 300, multi_label=True)
    metrics = score(coco, to_coco_results(ids, found, category_ids(coco, 80)), ids)
    assert metrics["mAP50_95"] == pytest.approx(0.3027, abs=0.002), metrics
    assert metrics["mAP50"] == pytest.approx(0.4755, abs=0.002), metrics


def test_yolov5n_exports_in_fp16_and_agrees_with_fp32(tmp_path, coco_photo):
    """The FP16 export (CUDA's default precision) traces; its output matches FP32's to FP16 rounding."""
    from yolo_w4.export import export_fp
    from yolo_w4.parity import compare_outputs
    from yolo_w4.runtime import create_session, input_feed

    detector = load_detector(shared(*YOLOV5N), "one2many")
    outputs = {}
    for precision in ("fp32", "fp16"):
        path = tmp_path / f"yolov5n-{precision}.onnx"
        export_fp(detector.model, path, precision=precision)
        session, _ = create_session(path, "cpu")
        outputs[precision] = session.run(None, input_feed(session, coco_photo[0]))[0].astype("float32")
    parity = compare_outputs(outputs["fp32"], outputs["fp16"], "one2many")
    assert parity["sqnr_db"] > 40, parity
