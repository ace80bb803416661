"""The analytic counter against the PyTorch twins: parameters, per-layer shapes and FLOPs of real forwards.

* params equal ``sum(p.numel())`` of the torch model; every layer's input/output shape equals what forward
  hooks see on a real forward (names are the state-dict paths, so the two lists line up one to one);
* ``fvcore`` convention x 2 equals ``torch.utils.flop_counter.FlopCounterMode``'s conv and linear FLOPs (no bias);
  the fast op's own count (its registered formula) is 2 x the involution MACs, the taps op's zero;
  fvcore's own analysis, when installed, gives the same conv + linear and adds BN at 2 per element;
* ``full`` MACs equal that plus the involution op counted from the torch layers' real output sizes;
* ``published`` equals an independent re-implementation of mmcv's counter rules hooked onto the torch
  model's backbone + neck (plus the involution op at input resolution).
Hypothesis draws small variants (stage blocks, K, group channels incl. "all", reduction, kernel generator,
classes, odd and even input sizes).
"""
from math import prod

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("involution.torch.models")

from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from involution.reference.complexity import count  # noqa: E402
from involution.reference.rednet import RedNet  # noqa: E402
from involution.reference.resnet import ResNet  # noqa: E402

# Widths of the drawn models: stem involution on 8 channels, bottleneck mids 8, 16, 32, 64; every drawn
# group_channels and reduction divides them all.
SMALL = dict(stem_channels=16, base_channels=8)


@st.composite
def rednet_configs(draw):
    """Constructor options of a small RedNet and an input size ``(H, W)``."""
    config = dict(
        stage_blocks=tuple(draw(st.lists(st.integers(1, 2), min_size=1, max_size=4), label="stage_blocks")),
        kernel_size=draw(st.sampled_from([1, 3, 5, 7]), label="kernel_size"),
        group_channels=draw(st.sampled_from([1, 2, 4, 8, "all"]), label="group_channels"),
        reduction=draw(st.sampled_from([1, 2, 4, 8]), label="reduction"),
        kernel_gen=draw(st.sampled_from(["bottleneck", "linear"]), label="kernel_gen"),
        num_classes=draw(st.integers(1, 12), label="num_classes"),
        **SMALL,
    )
    size = (draw(st.integers(1, 40), label="height"), draw(st.integers(1, 40), label="width"))
    return config, size


@st.composite
def resnet_configs(draw):
    config = dict(stage_blocks=tuple(draw(st.lists(st.integers(1, 2), min_size=1, max_size=4), label="stage_blocks")),
                  num_classes=draw(st.integers(1, 12), label="num_classes"), **SMALL)
    size = (draw(st.integers(1, 40), label="height"), draw(st.integers(1, 40), label="width"))
    return config, size


def mmcv_rule_flops(module, inputs, output) -> int:
    """What mmcv's ``get_model_complexity_info`` adds for one call of ``module``; the involution op at input size."""
    elements_in, elements_out = inputs[0].numel(), output.numel()
    if isinstance(module, nn.Conv2d):
        per_position = prod(module.kernel_size) * module.in_channels * module.out_channels // module.groups
        return per_position * elements_out // module.out_channels + (elements_out if module.bias is not None else 0)
    if isinstance(module, nn.BatchNorm2d):
        return 2 * elements_in
    if isinstance(module, nn.ReLU):
        return elements_out
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, torch_models.GlobalAvgPool2d)):
        return elements_in
    if isinstance(module, torch_models.Involution2d):
        return prod(module.kernel_size) * elements_in
    return 0


def observe(model, x) -> dict:
    """One real forward of ``model`` under FlopCounterMode with forward hooks on every leaf and involution.

    Returns ``layers`` ``[(name, type, input shape, output shape)]`` in execution order, ``flop_counter`` (torch's
    total), ``involution_macs`` (``K*K`` per output element of each involution) and ``mmcv_flops`` (mmcv's
    rules on backbone + neck, as ``tools/get_flops.py`` runs ``extract_feat``).
    """
    seen = {"layers": [], "involution_macs": 0, "mmcv_flops": 0}

    def hook(module, inputs, output, name):
        seen["layers"].append((name, type(module).__name__, tuple(inputs[0].shape), tuple(output.shape)))
        if not name.startswith("head"):
            seen["mmcv_flops"] += mmcv_rule_flops(module, inputs, output)
        if isinstance(module, torch_models.Involution2d):
            seen["involution_macs"] += prod(module.kernel_size) * output.numel()

    handles = [module.register_forward_hook(lambda *args, name=name: hook(*args, name))
               for name, module in model.named_modules()
               if not list(module.children()) or isinstance(module, torch_models.Involution2d)]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    seen["flop_counter"] = counter.get_total_flops()
    seen["involution_flops"] = sum(flops for op, flops in counter.get_flop_counts()["Global"].items()
                                   if str(op).startswith("involution."))  # the fast op has a formula, taps none
    return seen


def check_against_torch(reference, twin, size, label):
    """Every cross-check of the module docstring for one pair of models built with the same options."""
    report = count(reference, size)
    torch_params = sum(parameter.numel() for parameter in twin.parameters())
    assert report.params == torch_params, f"{label}: counted {report.params} params, torch has {torch_params}"
    seen = observe(twin.eval(), torch.randn(report.input_shape))

    ours = [(layer.name, layer.type, layer.input_shape, layer.output_shape) for layer in report.layers
            if layer.type != "Add"]
    mismatch = next((pair for pair in zip(ours, seen["layers"]) if pair[0] != pair[1]), None)
    assert len(ours) == len(seen["layers"]) and mismatch is None, (
        f"{label}: first differing layer (counted, torch) {mismatch}; {len(ours)} vs {len(seen['layers'])} layers")
    fvcore, full = report.total("fvcore"), report.total("full")
    convolutions = seen["flop_counter"] - seen["involution_flops"]
    assert 2 * fvcore.macs == convolutions, (
        f"{label}: fvcore MACs {fvcore.macs} x 2 != FlopCounterMode's conv and linear FLOPs {convolutions}")
    fast = any(getattr(module, "backend", None) == "fast" for module in twin.modules())
    assert seen["involution_flops"] == (2 * seen["involution_macs"] if fast else 0), (
        f"{label}: FlopCounterMode counted {seen['involution_flops']} involution FLOPs, "
        f"involution MACs {seen['involution_macs']}, fast op: {fast}")
    assert full.macs == fvcore.macs + seen["involution_macs"], (
        f"{label}: full {full.macs} != {fvcore.macs} + involution {seen['involution_macs']}")
    published = report.total("published").flops
    assert published == seen["mmcv_flops"], f"{label}: published {published} != mmcv rules {seen['mmcv_flops']}"


# Each example is a real forward under FlopCounterMode (~0.1-0.5 s on 2 cores): fewer than the profile's 60.
@settings(max_examples=25)
@given(rednet_configs())
def test_rednet_variants_match_torch(case):
    config, size = case
    check_against_torch(RedNet(**config), torch_models.RedNet(**config), size, f"RedNet{config} at {size}")


@settings(max_examples=15)
@given(resnet_configs())
def test_resnet_variants_match_torch(case):
    config, size = case
    check_against_torch(ResNet(**config), torch_models.ResNet(**config), size, f"ResNet{config} at {size}")


@pytest.mark.parametrize("family, depth", [("rednet", 26), ("resnet", 26)])
def test_standard_model_at_224_matches_torch(family, depth):
    reference, twin = {"rednet": (RedNet, torch_models.RedNet), "resnet": (ResNet, torch_models.ResNet)}[family]
    check_against_torch(reference(depth), twin(depth), (224, 224), f"{family}{depth}")


@pytest.mark.parametrize("family, size", [("rednet", (97, 75)), ("resnet", (65, 57))])
def test_fvcore_reports_conv_linear_plus_batchnorm(family, size):
    fvcore_nn = pytest.importorskip("fvcore.nn")
    reference, twin = {"rednet": (RedNet, torch_models.RedNet), "resnet": (ResNet, torch_models.ResNet)}[family]
    report = count(reference(26), size)
    analysis = fvcore_nn.FlopCountAnalysis(twin(26).eval(), torch.randn(report.input_shape))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_operator = analysis.by_operator()
    batch_norm = sum(layer.element_ops for layer in report.layers if layer.type == "BatchNorm2d")
    assert by_operator["conv"] + by_operator["linear"] == report.total("fvcore").macs, by_operator
    assert analysis.total() == report.total("fvcore").macs + batch_norm, (analysis.total(), by_operator, batch_norm)


def test_set_backend_switches_every_involution():
    model = torch_models.RedNet(stage_blocks=(1, 1), group_channels=4, num_classes=3, backend="taps", **SMALL)
    involutions = [m for m in model.modules() if isinstance(m, torch_models.Involution2d)]
    assert len(involutions) == 3 and all(m.backend == "taps" for m in involutions)
    with pytest.raises(ValueError, match=r"backend must be a torch backend, one of \('fast', 'taps'\), got 'fast-cpu'"):
        model.set_backend("fast-cpu")
    assert all(m.backend == "taps" for m in involutions)


def test_fast_backend_gives_the_taps_logits_or_a_clear_error():
    model = torch_models.RedNet(stage_blocks=(1, 1), group_channels=4, num_classes=3, dtype=torch.float64,
                                backend="taps", **SMALL).eval()
    x = torch.randn(2, 3, 23, 18, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        try:
            model.set_backend("fast")
        except ImportError as error:
            assert "involution.torch.ops" in str(error), error
            pytest.skip(f"fast backend unavailable: {error}")
        got = model(x)
    error = (got - expected).abs().max().item()
    assert error <= 1e-12 * expected.abs().max().item(), f"fast vs taps logits differ by {error}"
