"""The detectors' and segmentor's counts against PyTorch twins (tests/detection_torch.py) on real forwards.

At a reduced input (128x96, five FPN levels down to 2x2) and with 16 / 8 RoIs: params (all, and trainable after
``frozen_stages=1``) equal the twin's; every module's name, type and input/output shapes equal what forward hooks
see; ``2 x fvcore`` MACs equal ``FlopCounterMode``; for the detectors, ``published`` equals mmcv's rules (exact
module types, the involution op at input resolution) hooked onto the twin.
"""
from dataclasses import replace
from math import prod

import pytest

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("involution.torch.models")
import detection_torch  # noqa: E402  (tests/detection_torch.py, needs torch)

from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from involution.reference.complexity import count  # noqa: E402
from involution.reference.detection import detector  # noqa: E402

SIZE = (128, 96)
ROIS, MASK_ROIS = 16, 8
# Work our count lists that no torch module runs (functional calls, RoIAlign, residual adds).
FUNCTIONAL = ("interpolate", "add", "Add", "max_pool2d", "relu", "RoIAlign")
TWIN_TYPES = {"SyncBatchNorm": "BatchNorm2d", "MmcvConv2d": "Conv2d", "MmcvConvTranspose2d": "ConvTranspose2d"}


def mmcv_rule(module, inputs, output) -> int:
    """mmcv's counter (before PR #715: exact torch types only), plus the involution op at input resolution."""
    kind, elements_in, elements_out = type(module), inputs[0].numel(), output.numel()
    if kind is nn.Conv2d:
        per_position = prod(module.kernel_size) * module.in_channels
        return per_position * elements_out + (elements_out if module.bias is not None else 0)
    if kind is nn.Linear:
        return elements_in * module.out_features
    if kind is nn.BatchNorm2d:
        return 2 * elements_in
    if kind is nn.ReLU:
        return elements_out
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        return elements_in
    if kind is torch_models.Involution2d:
        return prod(module.kernel_size) * elements_in
    return 0


def observe(twin, x):
    seen = {"layers": [], "mmcv": 0}

    def hook(module, inputs, output, name):
        kind = type(module).__name__
        if kind != "Upsample":
            seen["layers"].append((name, TWIN_TYPES.get(kind, kind), tuple(inputs[0].shape), tuple(output.shape)))
        seen["mmcv"] += mmcv_rule(module, inputs, output)

    handles = [module.register_forward_hook(lambda *args, name=name: hook(*args, name))
               for name, module in twin.named_modules()
               if not list(module.children()) or isinstance(module, torch_models.Involution2d)]
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        twin(x)
    for handle in handles:
        handle.remove()
    seen["flop_counter"] = counter.get_total_flops()
    return seen


CASES = [("faster_rcnn", "resnet", "conv", "conv"), ("faster_rcnn", "rednet", "involution", "involution"),
         ("mask_rcnn", "rednet", "conv", "conv"), ("mask_rcnn", "rednet", "involution", "involution"),
         ("semantic_fpn", "resnet", "conv", "conv"), ("semantic_fpn", "rednet", "involution", "conv")]


@pytest.mark.parametrize("model, family, neck, head", CASES, ids=["-".join(case) for case in CASES])
def test_detector_matches_its_torch_twin(model, family, neck, head):
    description = detector(model, f"{family}50", neck, head, stem_kernel_size=3)
    if model == "semantic_fpn":
        twin = detection_torch.Segmentor(family, neck, stem_kernel_size=3)
    else:
        description = replace(description, roi_head=replace(description.roi_head, rois=ROIS, mask_rois=MASK_ROIS))
        twin = detection_torch.TwoStageDetector(model, family, neck, head, 3, ROIS, MASK_ROIS)
    report = count(description, SIZE)
    label = f"{model} {family} neck={neck} head={head}"
    assert report.params == sum(p.numel() for p in twin.parameters()), label
    trainable = sum(p.numel() for p in twin.parameters() if p.requires_grad)
    assert report.total("published").params == trainable, (label, report.total("published").params, trainable)

    seen = observe(twin.eval(), torch.randn(1, 3, *SIZE))
    ours = [(layer.name, layer.type if layer.type != "SyncBatchNorm" else "BatchNorm2d", layer.input_shape,
             layer.output_shape) for layer in report.layers if layer.type not in FUNCTIONAL]
    mismatch = next((pair for pair in zip(ours, seen["layers"]) if pair[0] != pair[1]), None)
    assert len(ours) == len(seen["layers"]) and mismatch is None, (
        f"{label}: first differing layer (counted, torch) {mismatch}; {len(ours)} vs {len(seen['layers'])} layers")
    assert 2 * report.total("fvcore").macs == seen["flop_counter"], (label, report.total("fvcore"), seen)
    if model != "semantic_fpn":  # the twin's norms are all BatchNorm2d; mmseg's SyncBN has no mmcv hook
        assert report.total("published").flops == seen["mmcv"], (label, report.total("published").flops, seen["mmcv"])
