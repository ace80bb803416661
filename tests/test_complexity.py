"""The analytic counter (involution.reference.complexity) and its CLI, without torch.

The official table is the oracle for the ``published`` convention; hand-derived formulas for one layer;
the reference network's own forward for shapes; internal consistency (per-layer sums, convention relations).
"""
import csv
import io
import json
from math import ceil

import numpy as np
import pytest

from involution.cli import main
from involution.reference.complexity import (CONVENTIONS, PUBLISHED, build, count, round_as_published,
                                             standard_reports)
from involution.reference.conv import Conv2d
from involution.reference.involution_layer import Involution2d
from involution.reference.module import Module
from involution.reference.rednet import Bottleneck, RedNet
from involution.reference.resnet import ResNet

# d-li14/involution README, "Image Classification on ImageNet": params (M), FLOPs (G) at 224x224.
OFFICIAL_TABLE = {26: (9.23, 1.73), 38: (12.39, 2.22), 50: (15.54, 2.71), 101: (25.65, 4.74), 152: (33.99, 6.79)}


@pytest.fixture(scope="module")
def rednet_reports():
    """depth -> Report of the standard RedNet at 224x224."""
    reports = standard_reports("rednet")
    return {depth: reports[f"rednet{depth}"] for depth in OFFICIAL_TABLE}


def test_cli_table_quotes_the_official_readme():
    assert {depth: (row["params_m"], row["flops_g"]) for depth, row in PUBLISHED.items()} == OFFICIAL_TABLE


@pytest.mark.parametrize("depth", sorted(OFFICIAL_TABLE))
def test_published_row_is_reproduced(rednet_reports, depth):
    report = rednet_reports[depth]
    params_m, flops_g = report.params / 1e6, report.total("published").flops / 1e9
    expected = OFFICIAL_TABLE[depth]
    assert (round_as_published(params_m), round_as_published(flops_g)) == expected, (
        f"RedNet-{depth}: counted {params_m:.6f} M params, {flops_g:.6f} G FLOPs (published convention); "
        f"official {expected}")


def test_single_rounding_misses_only_rednet152_params(rednet_reports):
    """The finding in docs/complexity.md: 33,984,582 params round to 33.98 M, the README says 33.99."""
    misses = {depth: round(report.params / 1e6, 2) for depth, report in rednet_reports.items()
              if round(report.params / 1e6, 2) != OFFICIAL_TABLE[depth][0]}
    assert list(misses) == [152], f"params rounded once that differ from the README: {misses}"
    flops = {depth: round(report.total("published").flops / 1e9, 2) for depth, report in rednet_reports.items()}
    assert flops == {depth: row[1] for depth, row in OFFICIAL_TABLE.items()}, flops


def alternative_flops(report, involution_at_output: bool, with_head: bool) -> float:
    """Published-convention GFLOPs with one assumption changed."""
    flops = report.total("published").flops
    for layer in report.layers:
        if involution_at_output and layer.type == "Involution2d":
            flops += layer.macs - layer.cost("published")[0]
        if with_head and layer.name.startswith("head."):
            flops += layer.macs + layer.bias_adds
    return flops / 1e9


@pytest.mark.parametrize("involution_at_output, with_head", [(True, False), (False, True), (True, True)],
                         ids=["involution-at-output", "with-head", "both"])
def test_alternative_explanations_miss_the_table(rednet_reports, involution_at_output, with_head):
    rows = {depth: round(alternative_flops(report, involution_at_output, with_head), 2)
            for depth, report in rednet_reports.items()}
    matches = [depth for depth, value in rows.items() if value == OFFICIAL_TABLE[depth][1]]
    assert len(matches) <= 1, f"alternative reproduces {matches}: {rows} vs {OFFICIAL_TABLE}"


def small_models():
    """(label, model, input_size) covering every layer rule, odd sizes and the variants the constructors allow."""
    return [
        ("rednet26-odd", RedNet(26, num_classes=10), (65, 57)),
        ("rednet-tiny-linear-all", RedNet(stage_blocks=(1, 2), kernel_size=5, group_channels="all", reduction=2,
                                          kernel_gen="linear", stem_channels=16, base_channels=8, num_classes=3),
         (33, 21)),
        ("resnet26", ResNet(26, num_classes=10), (49, 40)),
        ("involution", Involution2d(16, 3, 2, group_channels=4, reduction=2), (9, 7)),
        ("involution-dilated", Involution2d(6, 5, 3, group_channels="all", reduction=3, dilation=2), (8, 13)),
        ("bottleneck", Bottleneck(8, 32, 2, kernel_size=5, group_channels=2, reduction=2), (11, 6)),
        ("conv", Conv2d(3, 5, 3, 2, 1, bias=True), (7, 8)),
    ]


@pytest.mark.parametrize("label, model, size", small_models(), ids=[case[0] for case in small_models()])
def test_per_layer_sums_equal_totals(label, model, size):
    report = count(model, size, batch=2)
    assert sum(layer.params for layer in report.layers) == report.params == sum(
        p.data.size for p in model.parameters()), label
    for convention in CONVENTIONS:
        totals = report.total(convention)
        rows = report.rows(convention)
        assert (sum(row["macs"] for row in rows), sum(row["flops"] for row in rows)) == (totals.macs, totals.flops), (
            f"{label} {convention}: per-layer sums differ from {totals}")


@pytest.mark.parametrize("label, model, size", small_models(), ids=[case[0] for case in small_models()])
def test_full_is_fvcore_plus_involution_plus_elementwise(label, model, size):
    report = count(model, size)
    full, fvcore = report.total("full"), report.total("fvcore")
    involution_macs = sum(layer.macs for layer in report.layers if layer.type == "Involution2d")
    elementwise = sum(layer.bias_adds + layer.element_ops for layer in report.layers)
    assert full.macs == fvcore.macs + involution_macs, (label, full, fvcore, involution_macs)
    assert full.flops == 2 * full.macs + elementwise, (label, full, elementwise)
    assert fvcore.flops == fvcore.macs


def test_involution_layer_counted_by_hand():
    channels, kernel_size, stride, group_channels, reduction, (height, width) = 16, 3, 2, 4, 2, (9, 7)
    layer = Involution2d(channels, kernel_size, stride, group_channels=group_channels, reduction=reduction)
    report = count(layer, (height, width))
    out_h, out_w = ceil(height / stride), ceil(width / stride)
    hidden, taps = channels // reduction, kernel_size ** 2 * (channels // group_channels)
    expected = [  # (name, type, output shape, params, macs, bias adds)
        ("avgpool", "AvgPool2d", (1, channels, out_h, out_w), 0, 0, 0),
        ("conv1.conv", "Conv2d", (1, hidden, out_h, out_w), channels * hidden, channels * hidden * out_h * out_w, 0),
        ("conv1.bn", "BatchNorm2d", (1, hidden, out_h, out_w), 2 * hidden, 0, 0),
        ("conv1.activate", "ReLU", (1, hidden, out_h, out_w), 0, 0, 0),
        ("conv2.conv", "Conv2d", (1, taps, out_h, out_w), hidden * taps + taps, hidden * taps * out_h * out_w,
         taps * out_h * out_w),
        ("", "Involution2d", (1, channels, out_h, out_w), 0, channels * kernel_size ** 2 * out_h * out_w, 0),
    ]
    got = [(layer.name, layer.type, layer.output_shape, layer.params, layer.macs, layer.bias_adds)
           for layer in report.layers]
    assert got == expected
    published_op = report.layers[-1].cost("published")[0]
    assert published_op == channels * kernel_size ** 2 * height * width, published_op


@pytest.mark.parametrize("label, model, size", small_models(), ids=[case[0] for case in small_models()])
def test_output_shape_equals_reference_forward(label, model, size):
    report = count(model, size, batch=2)
    x = np.random.default_rng(0).standard_normal(report.input_shape).astype(np.float32)
    out = model.eval()(x)
    assert out.shape == report.layers[-1].output_shape, (label, out.shape, report.layers[-1])


def test_counts_scale_with_batch():
    model = RedNet(stage_blocks=(1, 1), group_channels=4, stem_channels=16, base_channels=8, num_classes=4)
    one, three = count(model, (20, 13)), count(model, (20, 13), batch=3)
    for convention in CONVENTIONS:
        single, triple = one.total(convention), three.total(convention)
        assert (triple.params, triple.macs, triple.flops) == (single.params, 3 * single.macs, 3 * single.flops)


def test_names_follow_the_state_dict(rednet_reports):
    report = rednet_reports[26]
    state_prefixes = {key.rsplit(".", 1)[0] for key in RedNet(26).state_dict()}
    weighted = {layer.name for layer in report.layers if layer.params}
    assert weighted == state_prefixes, f"differ: {sorted(weighted ^ state_prefixes)}"


def test_errors_name_the_problem():
    class Unknown(Module):
        pass

    with pytest.raises(TypeError, match="no rule for Unknown"):
        count(Unknown(), input_shape=(1, 3, 8, 8))
    report = count(Conv2d(3, 4, 3), 8)
    with pytest.raises(ValueError, match="convention must be one of"):
        report.total("mmcv")
    with pytest.raises(ValueError, match="model must be one of"):
        build("rednet51")
    with pytest.raises(ValueError, match="input_size must be >= 1"):
        count(Conv2d(3, 4, 3), (0, 8))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        count(Conv2d(3, 4, 3), (2, 8))


# --- the CLI ---------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main(["complexity", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_round_trips(capsys):
    code, out, _ = run_cli(capsys, "rednet26", "resnet26", "--format", "json", "--per-layer", "--input-size", "65,57",
                           "--convention", "published")
    assert code == 0
    records = json.loads(out)
    assert [record["model"] for record in records] == ["rednet26", "resnet26"]
    for record in records:
        report = count(build(record["model"]), (65, 57))
        totals = report.total("published")
        assert (record["params"], record["macs"], record["flops"]) == (totals.params, totals.macs, totals.flops)
        assert record["convention"] == "published" and record["input_size"] == [65, 57]
        assert record["layers"] == report.rows("published")
        assert "published" not in record  # not the published setting (224x224)
    assert records[0]["config"] == {"depth": 26, "num_classes": 1000, "kernel_size": 7, "group_channels": 16,
                                    "reduction": 4, "kernel_gen": "bottleneck"}
    assert records[1]["config"] == {"depth": 26, "num_classes": 1000}


def test_cli_json_options_reach_the_model(capsys):
    code, out, _ = run_cli(capsys, "--depth-list", "26", "--kernel-size", "3", "--group-channels", "all",
                           "--reduction", "2", "--kernel-gen", "linear", "--num-classes", "10", "--format", "json")
    assert code == 0
    (record,) = json.loads(out)
    model = RedNet(26, num_classes=10, kernel_size=3, group_channels="all", reduction=2, kernel_gen="linear")
    assert record["params"] == count(model).params and record["macs"] == count(model).total("full").macs


def test_cli_csv_header_and_rows(capsys):
    code, out, _ = run_cli(capsys, "rednet26", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["model", "convention", "input_h", "input_w", "params", "macs", "flops"]
    totals = count(build("rednet26")).total("full")
    assert rows[1] == ["rednet26", "full", "224", "224", str(totals.params), str(totals.macs), str(totals.flops)]
    code, out, _ = run_cli(capsys, "rednet26", "--format", "csv", "--per-layer")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and sum(int(row["flops"]) for row in rows) == totals.flops


def test_cli_table_shows_published_and_comparison(capsys):
    code, out, _ = run_cli(capsys, "rednet50", "--convention", "published", "--compare", "resnet",
                           "--format", "markdown")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("| rednet50") or line.startswith("| resnet50")]
    assert len(lines) == 2, out
    cells = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert cells[4:6] == ["15.54", "2.71"] and cells[-1] == "39.5% / 34.1%", cells
    assert "FLOPs = MACs + mmcv" in out


@pytest.mark.parametrize("argv, message", [
    (["rednet51"], "is not a model: expected rednet26"),
    (["rednet26", "--group-channels", "5"], "must be divisible by group_channels"),
])
def test_cli_errors_exit_2_with_a_message(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and message in err, err
