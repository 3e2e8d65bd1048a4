"""The loader: both checkpoint layouts, the fork's reference outputs, heads, bad input."""

import numpy as np
import pytest
import torch

from conftest import FALL_V8S, THUMIG, shared
from yolo_w4.checkpoint import load_detector
from yolo_w4.errors import UserError
from yolo_w4.parity import match_rows


def run(detector, tensor):
    with torch.no_grad():
        return detector.model(torch.as_tensor(tensor)).numpy()


@pytest.fixture(scope="module")
def reference():
    path = shared(*THUMIG)
    return np.load(path.with_name("yolov10n-thumig-layout-seed0.reference.npz"))


def test_thumig_layout_one2one_matches_the_fork(reference):
    detector = load_detector(shared(*THUMIG), "one2one")
    assert detector.layout == "thu-mig-yolov10"
    output = run(detector, reference["input"])
    expected = reference["one2one_export"]
    assert output.shape == expected.shape == (1, 300, 6)
    # Confident rows have score gaps >= 1.2e-3: compare them in order (fixture README).
    confident = expected[0, :, 4] > 0.25
    assert confident.sum() == 19
    got, want = output[0, confident], expected[0, confident]
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=0.1)
    np.testing.assert_allclose(got[:, 4], want[:, 4], atol=1e-4)
    np.testing.assert_array_equal(got[:, 5], want[:, 5])
    # The low-score tail has near ties: compare all 300 rows as a set.
    matched = match_rows(expected[0], output[0])
    assert np.abs(matched[:, :4] - output[0, :, :4]).max() < 0.1
    assert np.abs(matched[:, 4] - output[0, :, 4]).max() < 1e-4


def test_thumig_layout_one2many_matches_the_fork(reference):
    detector = load_detector(shared(*THUMIG), "one2many")
    output = run(detector, reference["input"])
    expected = reference["one2many"]
    assert output.shape == expected.shape == (1, 84, 8400)
    np.testing.assert_allclose(output[0, :4], expected[0, :4], atol=0.1)
    np.testing.assert_allclose(output[0, 4:], expected[0, 4:], atol=1e-4)


@pytest.mark.parametrize(("head", "shape"), [("one2one", (1, 300, 6)), ("one2many", (1, 84, 8400))])
def test_seeded_yolov10n_heads_give_export_shapes(seeded_checkpoint, head, shape):
    detector = load_detector(seeded_checkpoint, head)
    assert detector.seeded and detector.head == head
    assert run(detector, np.zeros((1, 3, 640, 640), np.float32)).shape == shape
    names = [n for n, m in detector.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert names == [], "Conv+BN must be fused"


def test_trained_yolov8s_loads_through_the_same_path(coco_photo):
    detector = load_detector(shared(*FALL_V8S), "one2many")
    assert detector.layout == "ultralytics" and len(detector.names) == 2
    output = run(detector, coco_photo[0])
    assert output.shape == (1, 6, 8400)
    assert np.isfinite(output).all() and output[0, 4:].min() >= 0 and output[0, 4:].max() <= 1


def test_yolov8_has_no_nms_free_head():
    with pytest.raises(UserError, match=r"no one-to-one .* set `head: one2many`"):
        load_detector(shared(*FALL_V8S), "one2one")


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint not found: .*nope\.pt \(set `checkpoint:`") as error:
        load_detector(tmp_path / "nope.pt")
    assert "\n" not in str(error.value)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint") as error:
        load_detector(path)
    assert "\n" not in str(error.value)


def test_classification_checkpoint_is_refused(tmp_path):
    from ultralytics.nn.tasks import ClassificationModel

    path = tmp_path / "yolov8n-cls.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=10, verbose=False)}, path)
    with pytest.raises(UserError, match="is a classification checkpoint"):
        load_detector(path)


def test_checkpoint_without_a_model(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="holds no model"):
        load_detector(path)
