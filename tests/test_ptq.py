"""Calibrated PTQ on the trained YOLOv5n: each method lowers the error it claims to."""

import json

import pytest
import torch

from conftest import VAL_IMAGES, shared
from test_legacy_yolov5 import YOLOV5N
from yolo_w4.checkpoint import load_detector
from yolo_w4.config import default_recipe
from yolo_w4.errors import UserError
from yolo_w4.grid import integer_range
from yolo_w4.parity import sqnr_db
from yolo_w4.preprocess import load_input
from yolo_w4.ptq import collect_input_stats, gptq, output_aware_scale
from yolo_w4.quantize import conv_layers, quantizable_layers, quantization_summary, quantize_weights
from yolo_w4.recipe import apply_calibration
from yolo_w4.sensitivity import choose_high_precision, dense_output, layer_sensitivity

TRAIN_IMAGES = ("coco2017", "source-data", "train2017")


@pytest.fixture(scope="module")
def proxy():
    return load_detector(shared(*YOLOV5N), "one2many")


@pytest.fixture(scope="module")
def calibration():
    return [torch.from_numpy(load_input(p)[0]) for p in sorted(shared(*TRAIN_IMAGES).glob("*.jpg"))[:8]]


@pytest.fixture(scope="module")
def held_out():
    return [torch.from_numpy(load_input(p)[0]) for p in sorted(shared(*VAL_IMAGES).glob("*.jpg"))[:4]]


def bits_of(model, bits=4):
    return {name: bits for name in quantizable_layers(model)}


def output_sqnr(fp_model, model, images):
    with torch.no_grad():
        ref = torch.cat([dense_output(fp_model, x, 640) for x in images]).numpy()
        out = torch.cat([dense_output(model, x, 640) for x in images]).numpy()
    return sqnr_db(ref, out)


def test_gptq_lowers_the_layer_output_error_not_the_weight_error(proxy, calibration):
    name = "model.8.m.0.cv2.conv"  # a 3x3 conv deep in the backbone
    model = quantize_weights(proxy.model, default_recipe())
    conv = conv_layers(model)[name]
    stats = collect_input_stats(model, {name: conv}, 8, calibration, second_moment=True)[name]
    W = conv_layers(proxy.model)[name].weight.detach().reshape(1, conv.out_channels, -1)
    scale = conv.quant_weight().scale.detach().reshape(1, -1)
    qmin, qmax = integer_range(4, True)
    rtn = torch.clamp(torch.round(W / scale.unsqueeze(-1)), qmin, qmax) * scale.unsqueeze(-1)
    ours = gptq(W, stats.hessian, scale, qmin, qmax)
    grid = ours / scale.unsqueeze(-1)
    assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= 7 + 1e-4, (
        "GPTQ stays on the 4-bit grid"
    )
    assert (ours != rtn).float().mean() > 0.05, "GPTQ really changed the rounding"
    H = stats.hessian[0].float()

    def output_error(Q):
        E = (W - Q)[0]
        return float(torch.einsum("oi,ij,oj->", E, H, E))

    assert output_error(ours) < 0.8 * output_error(rtn)
    assert float(((W - ours) ** 2).sum()) > float(((W - rtn) ** 2).sum()), "weight error is not the target"


def test_output_aware_scale_lowers_each_channels_output_error(proxy, calibration):
    name = "model.8.m.0.cv2.conv"
    model = quantize_weights(proxy.model, default_recipe(scale="output"))
    conv = conv_layers(model)[name]
    H = collect_input_stats(model, {name: conv}, 8, calibration, second_moment=True)[name].hessian.float()
    W = conv_layers(proxy.model)[name].weight.detach().reshape(1, conv.out_channels, -1)
    scale = conv.quant_weight().scale.detach().reshape(1, -1)
    qmin, qmax = integer_range(4, True)
    ratio = output_aware_scale(W, H, scale, qmin, qmax)

    def channel_errors(s):
        E = W - torch.clamp(torch.round(W / s.unsqueeze(-1)), qmin, qmax) * s.unsqueeze(-1)
        return torch.einsum("goi,gij,goj->go", E, H, E)

    searched, minmax = channel_errors(scale * ratio), channel_errors(scale)
    assert (searched <= minmax + 1e-9).all() and searched.sum() < 0.9 * minmax.sum()
    assert (ratio < 1).float().mean() > 0.5, "most channels clip below their max"


def test_bias_correction_removes_the_mean_output_shift(proxy, calibration):
    """First conv: its input is the image, so FP and quantized layers see the same data."""
    model = quantize_weights(proxy.model, default_recipe())
    fp_conv, q_conv = conv_layers(proxy.model)["model.0.conv"], conv_layers(model)["model.0.conv"]

    def mean_shift():
        with torch.no_grad():
            diffs = [(q_conv(x) - fp_conv(x)).mean((0, 2, 3)) for x in calibration]
        return torch.stack(diffs).mean(0).abs()

    before = mean_shift()
    records = apply_calibration(
        proxy.model, model, calibration, default_recipe(bias_correction="empirical"), bits_of(proxy.model)
    )
    after = mean_shift()
    assert before.max() > 1e-3 and after.max() < 1e-4 * max(1.0, float(before.max()) * 10)
    assert records["model.0.conv"]["weights_changed"] == 0 and records["model.0.conv"]["bias_shift_max"] > 0


def test_calibrated_ptq_beats_round_to_nearest_on_held_out_images(proxy, calibration, held_out):
    rtn = quantize_weights(proxy.model, default_recipe())
    calibrated = quantize_weights(proxy.model, default_recipe())
    apply_calibration(
        proxy.model,
        calibrated,
        calibration,
        default_recipe(method="gptq", bias_correction="empirical"),
        bits_of(proxy.model),
    )
    rtn_db, ours_db = output_sqnr(proxy.model, rtn, held_out), output_sqnr(proxy.model, calibrated, held_out)
    assert ours_db > rtn_db + 3, (rtn_db, ours_db)
    summary = quantization_summary(calibrated)
    assert summary["weights_4bit_fraction"] == 1.0


def test_gptq_result_survives_the_state_dict_round_trip(proxy, calibration, tmp_path, held_out):
    from yolo_w4.quantized_checkpoint import load_quantized, save_quantized

    settings = default_recipe(method="gptq", bias_correction="empirical")
    model = quantize_weights(proxy.model, settings)
    apply_calibration(proxy.model, model, calibration[:2], settings, bits_of(proxy.model))
    save_quantized(tmp_path / "q.pt", model, proxy, "w4a16_gptq", settings)
    rebuilt, _, _ = load_quantized(tmp_path / "q.pt", shared(*YOLOV5N))
    with torch.no_grad():
        assert torch.equal(rebuilt(held_out[0]), model(held_out[0]))


def test_sensitivity_ranking_is_reproducible_and_mixed_precision_keeps_its_budget(proxy, calibration):
    first = layer_sensitivity(proxy.model, calibration[:2])
    assert first == layer_sensitivity(proxy.model, calibration[:2])
    assert [row["rank"] for row in first] == list(range(1, len(first) + 1))
    assert first[0]["output_sqnr_db"] <= first[-1]["output_sqnr_db"]
    for budget in (0.9, 0.95):
        high = choose_high_precision(first, budget)
        assert high, "some layers fit in the 8-bit budget"
        model = quantize_weights(proxy.model, default_recipe(layer_bits={name: 8 for name in high}))
        fraction = quantization_summary(model)["weights_4bit_fraction"]
        assert budget <= fraction < 1.0
        assert {layer["bits"] for layer in quantization_summary(model)["layers"]} == {4, 8}


def test_calibration_photos_are_never_evaluation_images(tmp_path):
    """From the evaluation folder itself (calibration.images: null) the subset is set aside first."""
    from yolo_w4.calibration import select_calibration
    from yolo_w4.coco_subset import image_files, write_subset

    annotations = shared("coco2017", "source-data", "annotations", "instances_val2017.json")
    images = shared(*VAL_IMAGES)
    evaluated = tmp_path / "eval"
    write_subset(annotations, images, evaluated / "ids.txt", evaluated / "subset.json", 2)
    eval_ids = [int(i) for i in (evaluated / "ids.txt").read_text().split()]
    chosen = select_calibration(images, 10, annotations, None, evaluated / "subset.json", images)
    all_ids = sorted(image["id"] for image in json.loads(annotations.read_text())["images"])
    assert [c["id"] for c in chosen] == all_ids[2:12], "the next ten ids in order, after the evaluation subset"
    listed = tmp_path / "ids.txt"
    listed.write_text(f"{eval_ids[1]}\n{all_ids[5]}\n")
    with pytest.raises(UserError, match=r"1 calibration ids are also evaluation images \(ids \["):
        select_calibration(images, 10, annotations, listed, evaluated / "subset.json", images)
    train = shared("coco2017", "source-data", "annotations", "instances_train2017.json")
    other = select_calibration(shared(*TRAIN_IMAGES), 10, train, None, evaluated / "subset.json", images)
    assert len(other) == 10 and not {c["id"] for c in other} & set(all_ids)
    # label-free evaluation (no annotations): its files are numbered 1..N, so the same file is what counts
    free = tmp_path / "free"
    write_subset(None, images, free / "ids.txt", free / "subset.json", 3, image_size=lambda path: (1, 1))
    by_name = select_calibration(images, 4, None, None, free / "subset.json", images)
    assert [c["file_name"] for c in by_name] == [p.name for p in image_files(images)[3:7]]
    assert [c["id"] for c in select_calibration(images, 4, annotations, None, free / "subset.json", images)] == [
        i for i in all_ids[3:7]
    ], "COCO file names are their ids: id order skips the same three files"
    # every photo evaluated: nothing left to calibrate on, said in one line
    write_subset(annotations, images, evaluated / "ids.txt", evaluated / "all.json", 1000)
    with pytest.raises(UserError, match=r"no calibration photos: .* has none outside the 158-image evaluation subset"):
        select_calibration(images, 10, annotations, None, evaluated / "all.json", images)


def test_data_free_bias_correction_from_batchnorm_statistics(proxy, held_out):
    """No images: the checkpoint's BN statistics give each covered conv's input mean."""
    from yolo_w4.checkpoint import unpickle_checkpoint
    from yolo_w4.data_free import bias_shifts, expected_activation, input_means

    # E[SiLU(z)], z ~ N(0.5, 2^2), against a Monte-Carlo estimate
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 0.5
    exact = expected_activation(torch.tensor([0.5]), torch.tensor([2.0]), torch.nn.SiLU())
    assert float(exact) == pytest.approx(float(torch.nn.functional.silu(z).mean()), abs=5e-3)

    checkpoint = unpickle_checkpoint(shared(*YOLOV5N))
    means = input_means(checkpoint["model"].float().eval())
    assert 35 <= len(means) < len(quantizable_layers(proxy.model)), "most, not all, convs are covered"
    rtn = quantize_weights(proxy.model, default_recipe())
    corrected = quantize_weights(proxy.model, default_recipe())
    shifts = bias_shifts(corrected, proxy.model, means)
    assert set(shifts) == set(means) and max(shifts.values()) > 0
    # On real images, the layers' mean output shift (same FP input to both) shrinks.
    name = "model.1.conv"
    captured = []
    handle = conv_layers(proxy.model)[name].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        for x in held_out:
            proxy.model(x)
    handle.remove()

    def mean_shift(model):
        with torch.no_grad():
            return (
                torch.stack(
                    [
                        (conv_layers(model)[name](x) - conv_layers(proxy.model)[name](x)).mean((0, 2, 3))
                        for x in captured
                    ]
                )
                .mean(0)
                .abs()
                .sum()
            )

    assert mean_shift(corrected) < 0.5 * mean_shift(rtn)


def test_upstream_target_is_the_fp_weight_when_inputs_agree_and_moves_when_they_do_not(proxy, calibration):
    """fp_target solves argmin_V E||W x_fp - V x||²: W itself when x == x_fp (the image, stage 0)."""
    from yolo_w4.ptq import StagedActivations, collect_paired_stats

    model = quantize_weights(proxy.model, default_recipe())
    fp_layers, q_layers = conv_layers(proxy.model), conv_layers(model)
    fp_acts, q_acts = StagedActivations(proxy.model, calibration[:2]), StagedActivations(model, calibration[:2])
    first = collect_paired_stats(fp_acts, q_acts, fp_layers, {"model.0.conv": q_layers["model.0.conv"]})["model.0.conv"]
    W = fp_layers["model.0.conv"].weight.detach().reshape(1, 16, -1)
    assert torch.allclose(first.fp_target(W, 0.01), W, atol=1e-4)
    for _ in range(2):  # stage 2 reads RTN-quantized activations, not the FP ones
        fp_acts.run(advance=True)
        q_acts.run(advance=True)
    name = "model.2.cv1.conv"
    stats = collect_paired_stats(fp_acts, q_acts, fp_layers, {name: q_layers[name]})[name]
    W = fp_layers[name].weight.detach().reshape(1, q_layers[name].out_channels, -1)
    assert not torch.allclose(stats.fp_target(W, 0.01), W, atol=1e-3)


def test_paired_statistics_are_the_same_when_the_stage_stops_at_the_fitted_conv(proxy, calibration):
    """Upstream compensation stops each stage forward once the conv being fitted has its input:
    its statistics (hence GPTQ's integers) are bit for bit those of the whole stage, for fewer convs run."""
    from yolo_w4.ptq import StagedActivations, collect_paired_stats, execution_order

    model = quantize_weights(proxy.model, default_recipe())
    fp_layers, q_layers = conv_layers(proxy.model), conv_layers(model)
    fp_acts, q_acts = StagedActivations(proxy.model, calibration[:2]), StagedActivations(model, calibration[:2])
    calls = []
    counters = [conv.register_forward_pre_hook(lambda m, a: calls.append(1)) for conv in q_layers.values()]
    try:
        for stage in (2, 24):  # a C3 block (5 convs) and the detect head (3)
            while q_acts.stage < stage:
                fp_acts.run(advance=True)
                q_acts.run(advance=True)
            stage_layers = {n: m for n, m in q_layers.items() if n.startswith(f"model.{stage}.")}
            for position, name in enumerate(execution_order(q_acts, stage_layers)):
                calls.clear()
                early = collect_paired_stats(fp_acts, q_acts, fp_layers, {name: q_layers[name]})[name]
                stopped = len(calls)
                calls.clear()
                whole = collect_paired_stats(fp_acts, q_acts, fp_layers, {name: q_layers[name]}, whole_stage=True)[name]
                assert len(calls) == 2 * len(stage_layers), "the whole stage ran for each image"
                for field in ("sum", "gram", "cross", "reference_sum"):
                    assert torch.equal(getattr(early, field), getattr(whole, field)), (name, field)
                assert early.count == whole.count
                assert stopped == 2 * (position + 1), "per image: the convs up to the fitted one, none after it"
    finally:
        for handle in counters:
            handle.remove()


def test_upstream_compensation_beats_plain_gptq_on_held_out_images(proxy, calibration, held_out):
    plain = quantize_weights(proxy.model, default_recipe(scale="mse"))
    apply_calibration(proxy.model, plain, calibration, default_recipe(method="gptq", scale="mse"), bits_of(proxy.model))
    compensated = quantize_weights(proxy.model, default_recipe(scale="mse"))
    upstream = default_recipe(method="gptq", scale="mse", compensate_upstream=True)
    records = apply_calibration(proxy.model, compensated, calibration, upstream, bits_of(proxy.model))
    assert set(records) == set(quantizable_layers(proxy.model))
    plain_db, ours_db = output_sqnr(proxy.model, plain, held_out), output_sqnr(proxy.model, compensated, held_out)
    assert ours_db > plain_db + 0.5, (plain_db, ours_db)


def test_adaround_learns_a_rounding_that_lowers_each_stages_error(proxy, calibration):
    from yolo_w4.reconstruct import apply_adaround

    model = quantize_weights(proxy.model, default_recipe())
    rtn = {
        name: conv.quant_weight().value.detach()
        for name, conv in conv_layers(model).items()
        if name.startswith("model.2.")
    }
    options = {**default_recipe()["adaround"], "iterations": 40}
    records = apply_adaround(
        proxy.model, model, calibration[:4], bits=bits_of(proxy.model), narrow_range=True, stages=[2], **options
    )
    assert set(records) == set(rtn)
    record = records["model.2.cv1.conv"]
    assert record["stage_error"] < 0.8 * record["stage_error_start"], record
    for name in rtn:
        conv = conv_layers(model)[name]
        grid = conv.weight.detach() / conv.quant_weight().scale.detach()
        assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= 7 + 1e-4, (
            "AdaRound stays on the grid"
        )
    changed = sum(records[name]["weights_changed"] for name in rtn)
    assert changed > 0.02 * sum(before.numel() for before in rtn.values()), "some weights round the other way"


def test_adaround_from_gptq_starts_at_gptqs_integers_on_groups_and_lowers_the_stage_error(proxy, calibration):
    """`adaround.start: gptq` on groups of 32: the learned rounding begins exactly at GPTQ's result
    (a step with no learning rate changes nothing) and learning lowers the stage's error from there."""
    from yolo_w4.reconstruct import apply_adaround

    settings = {**default_recipe(), "group_size": 32, "method": "gptq", "scale": "mse", "compensate_upstream": True}
    model = quantize_weights(proxy.model, settings)
    apply_calibration(proxy.model, model, calibration[:4], settings, bits_of(proxy.model))
    stage = {n: c for n, c in conv_layers(model).items() if n.startswith("model.4.")}
    gptq_weights = {n: c.quant_weight().value.detach().clone() for n, c in stage.items()}
    options = {**default_recipe()["adaround"], "start": "gptq", "learn_bias": False}

    def learn(stages, **changes):
        return apply_adaround(
            proxy.model, model, calibration[:4], bits=bits_of(proxy.model), narrow_range=True, stages=stages,
            **{**options, **changes},
        )  # fmt: skip

    frozen = learn([4], iterations=1, lr=1e-12)
    assert all(row["weights_changed"] == 0 for row in frozen.values()), frozen
    wild = learn([4, 6], iterations=20, lr=5.0)  # two stages: the second learns after the first was put back
    assert not wild["model.4.cv1.conv"]["kept"] and not wild["model.6.cv1.conv"]["kept"], wild
    assert all(torch.equal(c.quant_weight().value, gptq_weights[n]) for n, c in stage.items())
    records = learn([4], iterations=200)
    record = records["model.4.cv1.conv"]
    assert record["kept"] and record["stage_error"] < record["stage_error_start"], record
    moved = {n: (c.quant_weight().value.detach() != gptq_weights[n]).float().mean() for n, c in stage.items()}
    assert 0 < max(moved.values()) < 0.5, moved
    for name, conv in stage.items():
        grid = conv.weight.detach() / conv.quant_weight().scale.detach()
        assert torch.allclose(grid, grid.round(), atol=1e-4) and grid.abs().max() <= 7 + 1e-4, name
