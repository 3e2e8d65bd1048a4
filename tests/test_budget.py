"""A bit budget per layer (`budget:`) on the trained YOLOv5n: the exact knapsack, the measured costs,
a model within its budget that exports, packs and runs in ONNX Runtime like PyTorch."""

import itertools
import math
import random

import numpy as np
import onnx
import pytest
import torch

from test_ptq import calibration, held_out, output_sqnr, proxy  # noqa: F401 (fixtures)
from yolo_w4.budget import FORMATS, STEPS, choose_formats, stored_bits
from yolo_w4.config import check_variant, default_recipe
from yolo_w4.errors import UserError
from yolo_w4.export import export_qcdq
from yolo_w4.groupwise import groupwise_layers
from yolo_w4.pack_int4 import pack_int4
from yolo_w4.parity import compare_outputs
from yolo_w4.quantize import quantization_summary, quantize_weights
from yolo_w4.recipe import run_recipe
from yolo_w4.runtime import create_session, input_feed

BUDGET = 4.5


@pytest.mark.parametrize("seed", range(5))
def test_the_knapsack_finds_the_least_cost_within_the_budget(seed):
    """Against every combination of 6 layers x 4 formats (4,096), counted in the same budget steps."""
    rng = random.Random(seed)
    formats = ["channel", "g64", "g32", "int8"]
    rows = []
    for layer in range(6):
        shape = (rng.choice([16, 32, 64]), rng.choice([8, 16, 32]), 3, 3)
        for fmt in formats:
            cost = rng.uniform(0.1, 1.0) / (2 if fmt == "g32" else 1) / (50 if fmt == "int8" else 1)
            rows.append({"layer": f"l{layer}", "format": fmt, "bits": stored_bits(shape, fmt), "cost": cost})
    total = sum(r["bits"] for r in rows if r["format"] == "channel")
    capacity = total * 1.3
    step = capacity / STEPS
    best = math.inf
    for combo in itertools.product(range(4), repeat=6):
        chosen = [rows[layer * 4 + k] for layer, k in enumerate(combo)]
        if sum(math.ceil(r["bits"] / step - 1e-9) for r in chosen) <= STEPS:
            best = min(best, sum(r["cost"] for r in chosen))
    picked = choose_formats(rows, capacity)
    by_key = {(r["layer"], r["format"]): r for r in rows}
    assert sum(by_key[item]["bits"] for item in picked.items()) <= capacity
    assert sum(by_key[item]["cost"] for item in picked.items()) == pytest.approx(best, rel=1e-12)
    with pytest.raises(ValueError, match="below the smallest format"):
        choose_formats(rows, total * 0.9)


def test_stored_bits_count_integers_and_fp16_scales():
    assert stored_bits((8, 4, 3, 3), "channel") == 8 * 36 * 4 + 8 * 16
    assert stored_bits((8, 4, 3, 3), "g32") == 8 * 36 * 4 + 8 * 2 * 16  # 36 weights: two groups, the last short
    assert stored_bits((8, 4, 3, 3), "g128") == stored_bits((8, 4, 3, 3), "channel")  # one group: per channel
    assert stored_bits((8, 4, 3, 3), "int8") == 8 * 36 * 8 + 8 * 16
    assert stored_bits((8, 4, 3, 3), "g32_asym") == 8 * 36 * 4 + 8 * 2 * (16 + 4)  # a 4-bit zero point per group


@pytest.fixture(scope="module")
def budgeted(proxy, calibration):  # noqa: F811
    settings = default_recipe(scale="mse", budget={"bits_per_weight": BUDGET, "images": 2})
    return run_recipe(proxy.model, settings, images=calibration[:2])


def test_the_budget_is_kept_and_spent_where_the_head_feels_it(budgeted, proxy, held_out):  # noqa: F811
    model, settings, records = budgeted
    summary = quantization_summary(model)
    assert 4.4 <= summary["bits_per_weight"] <= BUDGET, summary["bits_per_weight"]
    layers = groupwise_layers(model)
    assert set(layers) == set(settings["layer_groups"]) and len(set(records[n]["format"] for n in layers)) >= 3
    for name, conv in layers.items():
        fmt = records[name]["format"]
        bits, group, symmetric = FORMATS[fmt]
        assert conv.bits == bits and conv.group_size == min(group or conv.weight[0].numel(), conv.weight[0].numel())
        assert (conv.zero_point is None) == symmetric, name
        costs = records[name]["format_costs"]
        assert set(costs) == set(FORMATS) and costs["int8"] < costs["channel"], (name, costs)
    totals = {fmt: sum(records[n]["format_costs"][fmt] for n in layers) for fmt in FORMATS}
    assert totals["int8"] < totals["g16"] < totals["g32"] < totals["g64"] < totals["channel"], totals
    uniform = quantize_weights(proxy.model, default_recipe(scale="mse", group_size=32))
    assert quantization_summary(uniform)["bits_per_weight"] == pytest.approx(BUDGET, abs=0.01)
    ours, theirs = output_sqnr(proxy.model, model, held_out), output_sqnr(proxy.model, uniform, held_out)
    assert ours > theirs + 1.0, f"budget {ours:.2f} dB, uniform groups of 32 {theirs:.2f} dB at the same bits"


def test_a_budget_model_exports_packs_reloads_and_runs_like_pytorch(budgeted, proxy, held_out, tmp_path):  # noqa: F811
    from conftest import shared
    from test_legacy_yolov5 import YOLOV5N
    from yolo_w4.quantized_checkpoint import load_quantized, save_quantized

    model, settings, records = budgeted
    save_quantized(tmp_path / "b.pt", model, proxy, "w4a16_budget", settings, records)
    rebuilt, _, _ = load_quantized(tmp_path / "b.pt", shared(*YOLOV5N))
    x = held_out[0]
    with torch.no_grad():
        reference, again = model(x), rebuilt(x)
    reference, again = (out[0] if isinstance(out, (tuple, list)) else out for out in (reference, again))
    assert torch.equal(again, reference)
    path, packed = tmp_path / "b.onnx", tmp_path / "b-int4.onnx"
    export_qcdq(model, path, 640, "fp32")
    proto = onnx.load(str(path))
    blocks = {
        next(a.i for a in node.attribute if a.name == "block_size")
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
    }
    assert {16, 32, 64} <= blocks, blocks
    info = pack_int4(path, packed)
    eight = sum(conv.bits == 8 for conv in groupwise_layers(model).values())
    assert (
        eight and info["layers_kept_int8"] == eight and info["layers_packed"] == len(settings["layer_groups"]) - eight
    )
    outputs = []
    for file in (path, packed):
        session, _ = create_session(file, "cpu")
        outputs.append(session.run(None, input_feed(session, x.numpy()))[0].astype(np.float32))
    assert np.array_equal(outputs[0], outputs[1]), "INT4 packing changes nothing"
    assert compare_outputs(reference.numpy(), outputs[0], "one2many")["sqnr_db"] >= 80


def test_budgets_refuse_what_they_cannot_do(proxy, calibration):  # noqa: F811
    with pytest.raises(
        UserError, match=r"variants.b: budget chooses each layer's grid, so it cannot be combined with group_size: 32"
    ):
        check_variant("b", default_recipe(budget={"bits_per_weight": 4.5}, group_size=32))
    with pytest.raises(UserError, match=r"cannot be combined with mixed"):
        check_variant(
            "b", default_recipe(budget={"bits_per_weight": 4.5}, mixed={"min_4bit_fraction": 0.9, "high_bits": 8})
        )
    settings = default_recipe(budget={"bits_per_weight": 4.5, "images": 1, "formats": ["int8"]})
    with pytest.raises(UserError, match=r"budget.bits_per_weight 4.5 is below .* \(8\.\d+ bits per weight\)"):
        run_recipe(proxy.model, settings, images=calibration[:1])


def test_a_budget_naming_only_its_bits_gets_every_format_and_8_images():
    from yolo_w4.config import BUDGET_DEFAULTS

    assert BUDGET_DEFAULTS["formats"] == list(FORMATS)
    assert default_recipe(budget={"bits_per_weight": 4.25})["budget"] == {"bits_per_weight": 4.25, **BUDGET_DEFAULTS}


def test_a_gptq_recipe_costs_each_format_after_gptq(proxy, calibration):  # noqa: F811
    """GPTQ leaves less error than rounding to nearest in every format, and not by the same factor in each:
    what the knapsack trades for a GPTQ recipe is what GPTQ leaves."""
    from yolo_w4.budget import format_costs

    options = {"damp": 0.01, "act_order": True}
    rtn = format_costs(proxy.model, calibration[:1], 640, ["channel", "g32"], True, "mse")
    gptq = format_costs(proxy.model, calibration[:1], 640, ["channel", "g32"], True, "mse", gptq_options=options)
    totals = {
        (kind, fmt): sum(row["cost"] for row in rows if row["format"] == fmt)
        for kind, rows in (("rtn", rtn), ("gptq", gptq))
        for fmt in ("channel", "g32")
    }
    assert totals["gptq", "channel"] < 0.8 * totals["rtn", "channel"], totals
    assert totals["gptq", "g32"] < 0.8 * totals["rtn", "g32"], totals
    assert [row["bits"] for row in rtn] == [row["bits"] for row in gptq]


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_a_format_cost_runs_only_the_stages_after_the_layer_and_equals_the_whole_model_cost(
    proxy,  # noqa: F811
    calibration,  # noqa: F811
    rounding,
):
    """The cost pass keeps FP activations at each stage and shares each layer's Hessian inverse
    between its formats; its costs are the whole-model ones, each layer's GPTQ on its own statistics."""
    from yolo_w4.budget import format_costs, format_layer
    from yolo_w4.ptq import _grouped, collect_input_stats, gptq, integer_bounds, stage_of
    from yolo_w4.quantize import conv_layers
    from yolo_w4.sensitivity import dense_output, swapped_weight

    model, images = proxy.model, calibration[:1]
    options = {"damp": 0.01, "act_order": True} if rounding == "gptq" else None
    rows = format_costs(model, images, 640, ["channel", "g32_asym"], True, "mse", gptq_options=options)
    layers = conv_layers(model)
    with torch.no_grad():
        reference = dense_output(model, images[0], 640)
        for row in (rows[0], rows[41], rows[-1]):  # the first conv, one mid-network, the head's last
            conv = layers[row["layer"]]
            grid = format_layer(conv, row["format"], True, "mse")
            rounded = grid.quant_weight().value
            if options:
                stats = collect_input_stats(model, {row["layer"]: conv}, stage_of(row["layer"]), images, True)
                low, high = integer_bounds(grid, grid.bits, True)
                weight, scales = (_grouped(t.detach(), conv.groups) for t in (conv.weight, grid.element_scale()))
                rounded = gptq(weight, stats[row["layer"]].hessian, scales, low, high).reshape_as(conv.weight)
            with swapped_weight(conv, rounded):
                whole = float((dense_output(model, images[0], 640) - reference).pow(2).sum())
            assert row["cost"] == pytest.approx(whole, rel=1e-5), row
    assert rows[-1]["layer"].startswith(f"model.{len(model.model) - 1}.")
