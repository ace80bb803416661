"""Shapes-only descriptions of the paper's detectors and segmentor (Tables 3 and 4), as the official configs.

Source: d-li14/involution ``det/`` (mmdet 2.x) and ``seg/`` (mmseg 0.x): ``configs/_base_/models/
{faster,mask}_rcnn_red50{,_neck,_neck_fpn_head}_fpn.py``, ``fpn_red50{,_neck}.py``; the ResNet-50 rows are the
stock mmdet ``faster_rcnn_r50_fpn`` / ``mask_rcnn_r50_fpn`` and mmseg ``fpn_r50`` (ResNetV1c, deep stem).

* backbone ``RedNet``: as the classifier but the stem's involution is 7x7 (``involution(stem/2, 7, 1)``) and every
  involution is ``involution(C, 7, stride)`` with 16 channels per group, reduction 4; detectors freeze the stem
  and ``layer1`` (``frozen_stages=1``); the segmentor uses ``SyncBN`` in the stem and stages, freezes nothing;
* neck ``FPN`` (256 channels): 1x1 lateral convs with bias, top-down nearest upsampling and adds, 3x3 output
  convs with bias (``FPN_involution``: ``involution(256, 7, 1)`` instead), ``F.max_pool2d(1, stride=2)`` for a
  fifth level (detectors);
* ``RPNHead``: 3x3 conv with bias (``RPNHead_involution``: ``involution(256, 7, 1)``), ``F.relu``, 1x1 ``rpn_cls``
  (3 anchors, sigmoid) and ``rpn_reg`` (12), shared over the five levels;
* ``StandardRoIHead``: RoIAlign 7x7 -> ``Shared2FCBBoxHead`` (two 1024 fc, ``fc_cls`` 81, ``fc_reg`` 320); for
  Mask R-CNN RoIAlign 14x14 -> ``FCNMaskHead``: four 3x3 conv + ReLU (``FCNMaskHead_involution``: involution 7x7
  + ReLU), 2x2/2 deconv, ReLU, 1x1 ``conv_logits`` (80);
* ``FPNHead`` (Semantic FPN): per level ``max(1, log2(stride / 4))`` 3x3 conv (128, SyncBN, ReLU) + 2x bilinear
  upsample, summed at stride 4, ``conv_seg`` 1x1 (19 classes), resized to the input.

Counts follow what mmdet's / mmseg's ``tools/get_flops.py`` runs, ``forward_dummy``: the whole network on one
image, the RoI heads on 1000 proposals (box head) and the first 100 of them (mask head).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

from .architecture import (BatchNorm, Conv, ConvTranspose, Interpolate, Linear, Pool, ReLU, Sequence, conv_module,
                           involution, numbered, rednet_backbone, resnet_backbone, sequence, stages)
from .complexity import Layer, Report, parse_model_name, walk
from .rednet import EXPANSION, stage_blocks_for
from involution.spec import pair

MIXERS = ("conv", "involution")
DETECTORS = ("faster_rcnn", "mask_rcnn", "semantic_fpn")
DEFAULT_INPUT_SIZE = {"faster_rcnn": (1280, 800), "mask_rcnn": (1280, 800), "semantic_fpn": (2048, 1024)}
FPN_CHANNELS = 256
# The paper's Tables 3 (COCO: Faster / Mask R-CNN) and 4 (Cityscapes: Semantic FPN): model, backbone, neck, head,
# the RedNet stem involution's kernel the published convention reproduces them with (docs/complexity.md; None
# for ResNet), params (M), FLOPs (G).
DETECTION_TABLE = (
    ("faster_rcnn", "resnet50", "conv", "conv", None, 41.5, 207.1),
    ("faster_rcnn", "rednet50", "conv", "conv", 3, 31.6, 177.9),
    ("faster_rcnn", "rednet50", "involution", "conv", 3, 29.5, 135.0),
    ("faster_rcnn", "rednet50", "involution", "involution", 3, 29.0, 91.5),
    ("mask_rcnn", "resnet50", "conv", "conv", None, 44.2, 253.4),
    ("mask_rcnn", "rednet50", "conv", "conv", 3, 34.2, 224.2),
    ("mask_rcnn", "rednet50", "involution", "conv", 3, 32.2, 181.3),
    ("mask_rcnn", "rednet50", "involution", "involution", 3, 29.5, 104.6),
    ("semantic_fpn", "resnet50", "conv", "conv", None, 28.5, 362.8),
    ("semantic_fpn", "rednet50", "conv", "conv", 3, 18.5, 293.9),
    ("semantic_fpn", "rednet50", "involution", "conv", 3, 16.4, 205.2),
)


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def spatial_mixer(kind: str, channels: int):
    """The official swap: a 3x3 conv with bias (``conv``) or ``involution(channels, 7, 1)`` (``involution``)."""
    _check_choice(kind, "mixer", MIXERS)
    if kind == "conv":
        return Conv(channels, channels, (3, 3), padding=(1, 1), bias=True)
    return involution(channels, 7)


def resnet_v1c_backbone(depth=50, norm="SyncBatchNorm") -> Sequence:
    """mmseg's ``ResNetV1c``: the deep stem (3x3 convs 3->32/2, 32->32, 32->64, each BN + ReLU), max pool, stages."""
    stem = numbered(Conv(3, 32, (3, 3), (2, 2), (1, 1)), *norm_relu(32, norm),
                    Conv(32, 32, (3, 3), padding=(1, 1)), *norm_relu(32, norm),
                    Conv(32, 64, (3, 3), padding=(1, 1)), *norm_relu(64, norm))
    return Sequence((("stem", stem), ("maxpool", Pool("MaxPool2d", (3, 3), (2, 2), (1, 1))),
                     *stages(stage_blocks_for(depth), 64, 64, norm=norm, mixer="conv")))


def norm_relu(channels, norm):
    """A norm of type ``norm`` and a ReLU, after a conv of the deep stem."""
    return BatchNorm(channels, norm), ReLU()


def backbone(name: str, task: str, stem_kernel_size: int = 7) -> tuple[Sequence, tuple[str, ...]]:
    """``(description, frozen name prefixes)`` of ``"rednet50"``/``"resnet50"``... for ``task``
    (``"detection"``: BN, stem + layer1 frozen; ``"segmentation"``: SyncBN, nothing frozen, ResNetV1c)."""
    family, depth = parse_model_name(name)
    if task == "detection":
        if family == "rednet":
            return rednet_backbone(depth, stem_kernel_size=stem_kernel_size), ("backbone.stem", "backbone.layer1")
        return resnet_backbone(depth), ("backbone.conv1", "backbone.bn1", "backbone.layer1")
    if family == "rednet":
        return rednet_backbone(depth, stem_kernel_size=stem_kernel_size, norm="SyncBatchNorm"), ()
    return resnet_v1c_backbone(depth), ()


def _stage_widths(depth) -> tuple[int, ...]:
    return tuple(64 * EXPANSION * 2 ** index for index in range(len(stage_blocks_for(depth))))


def walk_backbone(description: Sequence, name, shape, layers) -> list[tuple[int, ...]]:
    """Walk the backbone; return the output shape of each stage ``layer1..`` (mmdet's ``out_indices=(0, 1, 2, 3)``)."""
    features = []
    for child_name, child in description.children:
        shape = walk(child, f"{name}.{child_name}", shape, layers)
        if child_name.startswith("layer"):
            features.append(shape)
    return features


def _add(name, shape, layers):
    layers.append(Layer(name, "add", shape, shape, 0, 0, 0, prod(shape)))


@dataclass(frozen=True)
class FPN:
    """mmdet/mmseg ``FPN`` (``fpn_convs`` as ``spatial_mixer(mixer, 256)``), ``num_outs`` levels."""

    in_channels: tuple[int, ...]
    mixer: str = "conv"
    num_outs: int = 5

    def lateral(self, channels) -> Sequence:
        return conv_module(channels, FPN_CHANNELS, 1, norm=None, act=False)

    def output(self):
        mixer = spatial_mixer(self.mixer, FPN_CHANNELS)
        return sequence(conv=mixer) if self.mixer == "conv" else mixer

    @property
    def params(self) -> int:
        return sum(self.lateral(channels).params + self.output().params for channels in self.in_channels)

    def walk_levels(self, name, shapes, layers) -> list[tuple[int, ...]]:
        laterals = [walk(self.lateral(channels), f"{name}.lateral_convs.{index}", shape, layers)
                    for index, (channels, shape) in enumerate(zip(self.in_channels, shapes))]
        for index in range(len(laterals) - 1, 0, -1):  # top-down: nearest upsample to the finer level, add
            upsampled = laterals[index - 1]
            layers.append(Layer(f"{name}.top_down.{index}", "interpolate", laterals[index], upsampled, 0, 0))
            _add(f"{name}.top_down.{index}", upsampled, layers)
        outs = [walk(self.output(), f"{name}.fpn_convs.{index}", shape, layers) for index, shape in enumerate(laterals)]
        for index in range(len(outs), self.num_outs):  # F.max_pool2d(outs[-1], 1, stride=2)
            outs.append(walk(Pool("max_pool2d", (1, 1), (2, 2)), f"{name}.extra.{index}", outs[-1], layers))
        return outs


@dataclass(frozen=True)
class RPNHead:
    """``RPNHead`` / ``RPNHead_involution``: one set of weights run on every level."""

    mixer: str = "conv"
    anchors: int = 3

    def layers(self) -> Sequence:
        return sequence(rpn_conv=spatial_mixer(self.mixer, FPN_CHANNELS), relu=ReLU("relu"))

    @property
    def params(self) -> int:
        return self.layers().params + Conv(FPN_CHANNELS, self.anchors, bias=True).params + Conv(
            FPN_CHANNELS, 4 * self.anchors, bias=True).params

    def walk_levels(self, name, shapes, layers) -> None:
        for level, shape in enumerate(shapes):
            start = len(layers)
            features = walk(self.layers(), name, shape, layers)
            walk(Conv(FPN_CHANNELS, self.anchors, bias=True), f"{name}.rpn_cls", features, layers)
            walk(Conv(FPN_CHANNELS, 4 * self.anchors, bias=True), f"{name}.rpn_reg", features, layers)
            if level:  # the same modules again: their parameters were counted at the first level
                layers[start:] = [replace(layer, params=0) for layer in layers[start:]]


def _roi_align(name, rois, size, layers) -> tuple[int, ...]:
    """RoIAlign (mmcv op, no module hook; cost depends on the boxes): recorded with no work."""
    out_shape = (rois, FPN_CHANNELS, size, size)
    layers.append(Layer(name, "RoIAlign", (rois, 5), out_shape, 0, 0))
    return out_shape


@dataclass(frozen=True)
class RoIHead:
    """``StandardRoIHead`` with ``Shared2FCBBoxHead`` and, when ``mask`` is set, ``FCNMaskHead[_involution]``."""

    mask: str | None = None
    num_classes: int = 80
    rois: int = 1000
    mask_rois: int = 100
    fc_channels: int = 1024

    def box_layers(self):
        features = FPN_CHANNELS * 7 * 7
        return (("shared_fcs.0", Linear(features, self.fc_channels)), ("relu", ReLU()),
                ("shared_fcs.1", Linear(self.fc_channels, self.fc_channels)), ("relu", ReLU()))

    def mask_layers(self) -> Sequence:
        convs = []
        for _ in range(4):
            if self.mask == "conv":
                convs.append(conv_module(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1, norm=None))
            else:
                convs.append(numbered(involution(FPN_CHANNELS, 7), ReLU()))
        return sequence(convs=numbered(*convs), upsample=ConvTranspose(FPN_CHANNELS, FPN_CHANNELS, (2, 2), (2, 2)),
                        relu=ReLU(), conv_logits=Conv(FPN_CHANNELS, self.num_classes, bias=True))

    def heads(self):
        return (Linear(self.fc_channels, self.num_classes + 1), Linear(self.fc_channels, 4 * self.num_classes))

    @property
    def params(self) -> int:
        total = sum(layer.params for _, layer in self.box_layers()) + sum(head.params for head in self.heads())
        return total + (self.mask_layers().params if self.mask else 0)

    def walk_rois(self, name, layers) -> None:
        shape = _roi_align(f"{name}.bbox_roi_extractor", self.rois, 7, layers)
        shape = (shape[0], prod(shape[1:]))  # x.flatten(1)
        for layer_name, layer in self.box_layers():
            shape = walk(layer, f"{name}.bbox_head.{layer_name}", shape, layers)
        for layer_name, head in zip(("fc_cls", "fc_reg"), self.heads()):
            walk(head, f"{name}.bbox_head.{layer_name}", shape, layers)
        if self.mask:
            shape = _roi_align(f"{name}.mask_roi_extractor", self.mask_rois, 14, layers)
            start = len(layers)
            walk(self.mask_layers(), f"{name}.mask_head", shape, layers)
            wrappers = (f"{name}.mask_head.upsample", f"{name}.mask_head.conv_logits")  # mmcv.cnn's wrapper types
            layers[start:] = [replace(layer, mmcv_hook=False) if layer.name in wrappers else layer
                              for layer in layers[start:]]


@dataclass(frozen=True)
class FPNHead:
    """mmseg's ``FPNHead``: ``scale_heads`` per level, summed at the finest level, ``conv_seg``."""

    levels: int = 4
    channels: int = 128
    num_classes: int = 19

    def scale_head(self, level: int) -> Sequence:
        parts = []
        for index in range(max(1, level)):
            parts.append(conv_module(FPN_CHANNELS if index == 0 else self.channels, self.channels, 3, padding=1,
                                     norm="SyncBatchNorm"))
            if level:
                parts.append(Interpolate(2, "bilinear"))
        return numbered(*parts)

    @property
    def params(self) -> int:
        return sum(self.scale_head(level).params for level in range(self.levels)) + self.classifier().params

    def classifier(self) -> Conv:
        return Conv(self.channels, self.num_classes, bias=True)

    def walk_levels(self, name, shapes, layers) -> tuple[int, ...]:
        output = None
        for level, shape in enumerate(shapes):
            scaled = walk(self.scale_head(level), f"{name}.scale_heads.{level}", shape, layers)
            if output is None:
                output = scaled
            else:
                _add(f"{name}.scale_heads.{level}", output, layers)
        return walk(self.classifier(), f"{name}.conv_seg", output, layers)  # dropout: identity at inference


def _freeze(layers, start, prefixes):
    layers[start:] = [replace(layer, trainable=False) if layer.name.startswith(prefixes) else layer
                      for layer in layers[start:]]


@dataclass(frozen=True)
class TwoStageDetector:
    """Faster / Mask R-CNN: backbone, FPN, RPN head, RoI head; ``frozen`` name prefixes hold no trainable weights."""

    type: str
    backbone: Sequence
    frozen: tuple[str, ...]
    neck: FPN
    rpn_head: RPNHead
    roi_head: RoIHead

    @property
    def params(self) -> int:
        return self.backbone.params + self.neck.params + self.rpn_head.params + self.roi_head.params

    def walk(self, name, shape, layers):
        start = len(layers)
        features = walk_backbone(self.backbone, _prefix(name, "backbone"), shape, layers)
        levels = self.neck.walk_levels(_prefix(name, "neck"), features, layers)
        self.rpn_head.walk_levels(_prefix(name, "rpn_head"), levels, layers)
        self.roi_head.walk_rois(_prefix(name, "roi_head"), layers)
        _freeze(layers, start, tuple(_prefix(name, prefix) for prefix in self.frozen))
        return levels[0]


@dataclass(frozen=True)
class Segmentor:
    """mmseg's ``EncoderDecoder``: backbone, FPN (4 levels), ``FPNHead``, bilinear resize to the input."""

    type: str
    backbone: Sequence
    neck: FPN
    decode_head: FPNHead

    @property
    def params(self) -> int:
        return self.backbone.params + self.neck.params + self.decode_head.params

    def walk(self, name, shape, layers):
        features = walk_backbone(self.backbone, _prefix(name, "backbone"), shape, layers)
        levels = self.neck.walk_levels(_prefix(name, "neck"), features, layers)
        logits = self.decode_head.walk_levels(_prefix(name, "decode_head"), levels, layers)
        out_shape = (*logits[:2], *shape[2:])
        layers.append(Layer(_prefix(name, "resize"), "interpolate", logits, out_shape, 0, 0, 0,
                            Interpolate(1, "bilinear").ops_per_element * prod(out_shape)))
        return out_shape


def _prefix(name, child):
    return f"{name}.{child}" if name else child


def detector(model: str, backbone_name: str = "rednet50", neck: str = "conv", head: str = "conv",
             stem_kernel_size: int = 7):
    """The description of ``model`` (``faster_rcnn``, ``mask_rcnn``, ``semantic_fpn``) with ``backbone_name``
    (``rednet50``, ``resnet50``, or another standard depth) and a ``conv`` or ``involution`` neck / head.

    ``head`` is the RPN head's 3x3 conv and the mask head's four convs; Semantic FPN has only ``head="conv"``
    (its ``FPNHead`` was not varied in the paper).
    """
    _check_choice(model, "model", DETECTORS)
    _check_choice(neck, "neck", MIXERS)
    _check_choice(head, "head", MIXERS)
    if model == "semantic_fpn":
        if head != "conv":
            raise ValueError(f"head must be 'conv' for semantic_fpn (the paper varies only its neck), got {head!r}")
        description, _ = backbone(backbone_name, "segmentation", stem_kernel_size)
        widths = _stage_widths(parse_model_name(backbone_name)[1])
        return Segmentor(model, description, FPN(widths, neck, num_outs=4), FPNHead())
    description, frozen = backbone(backbone_name, "detection", stem_kernel_size)
    widths = _stage_widths(parse_model_name(backbone_name)[1])
    return TwoStageDetector(model, description, frozen, FPN(widths, neck), RPNHead(head),
                            RoIHead(head if model == "mask_rcnn" else None))


def count_detector(model: str, backbone_name="rednet50", neck="conv", head="conv", input_size=None,
                   stem_kernel_size=None) -> Report:
    """Counts of :func:`detector` on one image of ``input_size`` ``(H, W)`` (default: the tools' 1280x800 for
    mmdet, 2048x1024 for mmseg); ``stem_kernel_size`` ``None`` means the official 7."""
    from .complexity import count

    description = detector(model, backbone_name, neck, head, stem_kernel_size or 7)
    size = pair(input_size or DEFAULT_INPUT_SIZE[model], "input_size", minimum=1)
    label = f"{model} {backbone_name} neck={neck}" + (f" head={head}" if model != "semantic_fpn" else "")
    return count(description, size, name=label)
