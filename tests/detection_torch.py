"""PyTorch twins of the paper's detectors and segmentor, written from the official mmdet / mmseg code (not from
``involution.reference.detection``), for the cross-checks of ``tests/test_detection_vs_torch.py``.

Module names follow the official state dicts where the counter names layers (``neck.lateral_convs.0.conv``,
``rpn_head.rpn_conv``, ``roi_head.bbox_head.shared_fcs.0``, ``roi_head.mask_head.convs.0.conv``,
``decode_head.scale_heads.2.0.conv``...). RoIAlign is not modelled: the RoI heads run on random RoI features of
the right shape. Involutions use the plain "taps" op, which FlopCounterMode does not see (as fvcore).
``MmcvConv2d`` / ``MmcvConvTranspose2d`` stand for mmcv's wrapper types (subclasses, so a counter hooking exact
types skips them, as mmcv's did before its PR #715).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from involution.reference.rednet import STAGE_BLOCKS
from involution.torch import models as torch_models


class MmcvConv2d(nn.Conv2d):
    """mmcv.cnn's ``Conv2d`` wrapper (used for the mask head's ``conv_logits``)."""


class MmcvConvTranspose2d(nn.ConvTranspose2d):
    """mmcv.cnn's ``ConvTranspose2d`` wrapper (the mask head's ``deconv`` upsample)."""


def conv_module(in_channels, out_channels, kernel_size, padding=0, norm=True, act=True) -> nn.Sequential:
    """mmcv's ``ConvModule``: children ``conv`` (bias without norm), ``bn``, ``activate``."""
    module = nn.Sequential()
    module.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=not norm))
    if norm:
        module.add_module("bn", nn.BatchNorm2d(out_channels))
    if act:
        module.add_module("activate", nn.ReLU())
    return module


def mixer(kind: str, channels: int) -> nn.Module:
    """``ConvModule(C, C, 3, padding=1)`` without norm (``conv``) or ``involution(C, 7, 1)``."""
    if kind == "conv":
        return conv_module(channels, channels, 3, padding=1, norm=False, act=False)
    return torch_models.Involution2d(channels, 7, backend="taps")


def backbone(family: str, task: str, stem_kernel_size: int = 7) -> nn.Module:
    """The det/seg backbone returning the four stage outputs: RedNet with a ``stem_kernel_size`` stem
    involution, mmdet's ResNet (7x7 stem) or mmseg's ResNetV1c (deep stem)."""
    blocks = STAGE_BLOCKS[50]
    if family == "rednet":
        model = torch_models.RedNetBackbone(blocks, 7, 16, 4, "bottleneck", 3, 64, 64, "taps")
        model.stem[1] = torch_models.Involution2d(32, stem_kernel_size, backend="taps")
    else:
        model = torch_models.ResNetBackbone(blocks, 3, 64, 64)
        if task == "segmentation":  # ResNetV1c: three 3x3 convs replace the 7x7 one
            del model.conv1, model.bn1, model.relu
            model.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                       nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                       nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    stem = model.stem if family == "resnet" and task == "segmentation" else model.stem_forward

    def features(x):
        x = model.maxpool(stem(x))
        outs = []
        for index in range(model.num_stages):
            x = getattr(model, f"layer{index + 1}")(x)
            outs.append(x)
        return outs

    model.features = features
    return model


class FPN(nn.Module):
    """mmdet's ``FPN`` / the official ``FPN_involution``, ``num_outs`` levels (extra ones by max pooling)."""

    def __init__(self, neck: str, num_outs: int, in_channels=(256, 512, 1024, 2048)):
        super().__init__()
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(conv_module(c, 256, 1, norm=False, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(mixer(neck, 256) for _ in in_channels)

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for index in range(len(laterals) - 1, 0, -1):
            laterals[index - 1] = laterals[index - 1] + F.interpolate(laterals[index],
                                                                      size=laterals[index - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class RPNHead(nn.Module):
    """mmdet's ``RPNHead`` / ``RPNHead_involution``: 3 anchors, sigmoid scores."""

    def __init__(self, head: str):
        super().__init__()
        self.rpn_conv = nn.Conv2d(256, 256, 3, padding=1) if head == "conv" else torch_models.Involution2d(256, 7, backend="taps")
        self.rpn_cls = nn.Conv2d(256, 3, 1)
        self.rpn_reg = nn.Conv2d(256, 12, 1)

    def forward(self, levels):
        outs = []
        for x in levels:
            x = F.relu(self.rpn_conv(x))
            outs.append((self.rpn_cls(x), self.rpn_reg(x)))
        return outs


class BBoxHead(nn.Module):
    """``Shared2FCBBoxHead``: two shared fc layers with one ``relu`` module, ``fc_cls`` (81), ``fc_reg`` (320)."""

    def __init__(self):
        super().__init__()
        self.shared_fcs = nn.ModuleList([nn.Linear(256 * 7 * 7, 1024), nn.Linear(1024, 1024)])
        self.relu = nn.ReLU()
        self.fc_cls = nn.Linear(1024, 81)
        self.fc_reg = nn.Linear(1024, 320)

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class MaskHead(nn.Module):
    """``FCNMaskHead`` / ``FCNMaskHead_involution``: four convs (or involution + ReLU), deconv, ReLU, logits."""

    def __init__(self, head: str):
        super().__init__()
        if head == "conv":
            self.convs = nn.ModuleList(conv_module(256, 256, 3, padding=1, norm=False) for _ in range(4))
        else:
            self.convs = nn.ModuleList(nn.Sequential(torch_models.Involution2d(256, 7, backend="taps"), nn.ReLU()) for _ in range(4))
        self.upsample = MmcvConvTranspose2d(256, 256, 2, 2)
        self.relu = nn.ReLU()
        self.conv_logits = MmcvConv2d(256, 80, 1)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(self.relu(self.upsample(x)))


class RoIHead(nn.Module):
    def __init__(self, mask_head):
        super().__init__()
        self.bbox_head = BBoxHead()
        if mask_head:
            self.mask_head = MaskHead(mask_head)


class TwoStageDetector(nn.Module):
    """Faster / Mask R-CNN as ``forward_dummy`` runs it; ``rois`` / ``mask_rois`` random RoI features."""

    def __init__(self, model, family, neck, head, stem_kernel_size=7, rois=1000, mask_rois=100):
        super().__init__()
        self.backbone = backbone(family, "detection", stem_kernel_size)
        self.neck = FPN(neck, 5)
        self.rpn_head = RPNHead(head)
        self.roi_head = RoIHead(head if model == "mask_rcnn" else None)
        self.rois, self.mask_rois = rois, mask_rois
        frozen = ("backbone.stem", "backbone.layer1") if family == "rednet" else (
            "backbone.conv1", "backbone.bn1", "backbone.layer1")
        for name, parameter in self.named_parameters():  # frozen_stages=1
            parameter.requires_grad = not name.startswith(frozen)

    def forward(self, x):
        levels = self.neck(self.backbone.features(x))
        self.rpn_head(levels)
        self.roi_head.bbox_head(torch.randn(self.rois, 256, 7, 7))
        if hasattr(self.roi_head, "mask_head"):
            self.roi_head.mask_head(torch.randn(self.mask_rois, 256, 14, 14))
        return levels


class FPNHead(nn.Module):
    """mmseg's ``FPNHead``: per level ``max(1, level)`` ConvModules (128) each followed by a 2x bilinear upsample
    (not on the finest level), summed, ``conv_seg`` (19)."""

    def __init__(self):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for level in range(4):
            head = nn.Sequential()
            for index in range(max(1, level)):
                head.add_module(str(len(head)), conv_module(256 if index == 0 else 128, 128, 3, padding=1))
                if level:
                    head.add_module(str(len(head)), nn.Upsample(scale_factor=2, mode="bilinear"))
            self.scale_heads.append(head)
        self.conv_seg = nn.Conv2d(128, 19, 1)

    def forward(self, levels):
        output = self.scale_heads[0](levels[0])
        for head, x in zip(self.scale_heads[1:], levels[1:]):
            output = output + head(x)
        return self.conv_seg(output)


class Segmentor(nn.Module):
    """mmseg's ``EncoderDecoder`` with Semantic FPN, resized to the input."""

    def __init__(self, family, neck, stem_kernel_size=7):
        super().__init__()
        self.backbone = backbone(family, "segmentation", stem_kernel_size)
        self.neck = FPN(neck, 4)
        self.decode_head = FPNHead()

    def forward(self, x):
        logits = self.decode_head(self.neck(self.backbone.features(x)))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear")
