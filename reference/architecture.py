"""Shapes-only descriptions of networks: every layer's sizes and options, no weights.

A description is a tree of small frozen records (:class:`Conv`, :class:`BatchNorm`, :class:`Involution`,
:class:`Residual`, :class:`Sequence`...) that ``involution.reference.complexity.count`` walks to count
parameters and work. It costs a few kilobytes whatever the hyper-parameters: a RedNet-152 with a 999x999
involution kernel is described (and counted) in milliseconds, where building its weights would take ~33 GiB.

Two ways to get one:

* :func:`rednet` / :func:`resnet` build it from the constructor options of ``RedNet`` / ``ResNet`` (same
  option checks, same stage table ``STAGE_BLOCKS``, same layer names), the detectors of
  ``involution.reference.detection`` likewise;
* :func:`describe` reads it off a built reference module (its attributes, never its weights).

``tests/test_complexity.py`` checks that the two agree layer by layer for the standard and small variants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from .involution_layer import InvolutionOptions, check_involution_options
from .rednet import EXPANSION, stage_blocks_for
from involution.spec import check_int, pair


def weight_params(in_channels: int, out_channels: int, kernel_size: tuple[int, int], bias: bool) -> int:
    """Weights of a dense (one-group) convolution or transposed convolution: ``in * out * kh * kw``, plus ``out``
    biases."""
    kh, kw = kernel_size
    return in_channels * out_channels * kh * kw + (out_channels if bias else 0)


@dataclass(frozen=True)
class Conv:
    """``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)``, one group."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = False
    type: ClassVar[str] = "Conv2d"

    @property
    def params(self) -> int:
        return weight_params(self.in_channels, self.out_channels, self.kernel_size, self.bias)


@dataclass(frozen=True)
class ConvTranspose:
    """``nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, bias=bias)``, no padding."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    bias: bool = True
    type: ClassVar[str] = "ConvTranspose2d"

    @property
    def params(self) -> int:
        return weight_params(self.in_channels, self.out_channels, self.kernel_size, self.bias)


@dataclass(frozen=True)
class Linear:
    """``nn.Linear(in_features, out_features, bias)`` on ``(N, in_features)``."""

    in_features: int
    out_features: int
    bias: bool = True
    type: ClassVar[str] = "Linear"

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class BatchNorm:
    """Affine batch norm over ``channels``; ``type`` ``"SyncBatchNorm"`` for mmseg's ``SyncBN`` (same work)."""

    channels: int
    type: str = "BatchNorm2d"

    @property
    def params(self) -> int:
        return 2 * self.channels


@dataclass(frozen=True)
class ReLU:
    """``nn.ReLU`` (``type`` ``"ReLU"``) or the functional ``F.relu`` (``type`` ``"relu"``: no module)."""

    type: str = "ReLU"
    params: ClassVar[int] = 0


@dataclass(frozen=True)
class Pool:
    """``nn.MaxPool2d`` / ``nn.AvgPool2d`` (``type``), torch's output-size rule incl. ``ceil_mode``;
    ``type`` ``"max_pool2d"`` for the functional ``F.max_pool2d`` (no module)."""

    type: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    params: ClassVar[int] = 0


@dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over space, ``(B, C, H, W) -> (B, C)``."""

    type: ClassVar[str] = "GlobalAvgPool2d"
    params: ClassVar[int] = 0


@dataclass(frozen=True)
class Interpolate:
    """``F.interpolate(x, scale_factor=scale_factor, mode=mode)`` (mmseg's ``Upsample`` module calls it too)."""

    scale_factor: int
    mode: str = "nearest"
    type: ClassVar[str] = "interpolate"
    params: ClassVar[int] = 0

    @property
    def ops_per_element(self) -> int:
        """Arithmetic per output element: 0 for nearest (a copy), 7 for bilinear (4 weights, 4 mul + 3 add)."""
        return {"nearest": 0, "bilinear": 7}[self.mode]


@dataclass(frozen=True)
class Sequence:
    """Children run in order; ``children`` is a tuple of ``(name, description)``."""

    children: tuple

    @property
    def params(self) -> int:
        return sum(child.params for _, child in self.children)


def sequence(**children) -> Sequence:
    """``Sequence`` with the keyword arguments as named children, in order (``None`` values skipped)."""
    return Sequence(tuple((name, child) for name, child in children.items() if child is not None))


def numbered(*children) -> Sequence:
    """``Sequence`` of ``children`` named ``"0"``, ``"1"``... (``nn.Sequential``'s names)."""
    return Sequence(tuple((str(index), child) for index, child in enumerate(children)))


@dataclass(frozen=True)
class Involution:
    """An involution layer: its kernel generator (``generator()``), then the op.

    ``options`` are checked by ``check_involution_options``, the layer constructor's own checks.
    """

    options: InvolutionOptions
    type: ClassVar[str] = "Involution2d"

    @property
    def padding(self) -> tuple[int, int]:
        return self.options.padding

    def generator(self) -> Sequence:
        """``[avgpool,] [conv1 (conv, bn, activate),] conv2 (conv with bias)``: ``Involution2d``'s children."""
        options = self.options
        avgpool = None
        if options.strided:
            avgpool = Pool("AvgPool2d", options.stride, options.stride, ceil_mode=True)
        conv1 = None
        if options.kernel_gen == "bottleneck":
            conv1 = sequence(conv=Conv(options.channels, options.hidden), bn=BatchNorm(options.hidden),
                             activate=ReLU())
        conv2 = sequence(conv=Conv(options.hidden, options.taps, bias=True))
        return sequence(avgpool=avgpool, conv1=conv1, conv2=conv2)

    @property
    def params(self) -> int:
        return self.generator().params


def involution(channels, kernel_size=7, stride=1, group_channels=16, reduction=4, kernel_gen="bottleneck",
               dilation=1) -> Involution:
    """``Involution2d``'s description; the same arguments, defaults and errors."""
    return Involution(check_involution_options(channels, kernel_size, stride, group_channels, reduction, kernel_gen,
                                               dilation))


@dataclass(frozen=True)
class Residual:
    """``relu(main(x) + shortcut(x))`` (``shortcut`` ``None``: identity); the output ReLU is named ``relu_name``."""

    main: Sequence
    shortcut: Union[Sequence, None]
    relu_name: str = "relu3"
    shortcut_name: str = "downsample"

    @property
    def params(self) -> int:
        return self.main.params + (self.shortcut.params if self.shortcut is not None else 0)


def conv_module(in_channels, out_channels, kernel_size, stride=1, padding=0, norm="BatchNorm2d",
                act=True) -> Sequence:
    """mmcv's ``ConvModule``: ``conv`` (bias exactly when there is no norm), ``bn`` of type ``norm``, ``activate``."""
    return sequence(conv=Conv(in_channels, out_channels, pair(kernel_size, "kernel_size", minimum=1),
                              pair(stride, "stride", minimum=1), pair(padding, "padding", minimum=0),
                              bias=norm is None),
                    bn=BatchNorm(out_channels, norm) if norm else None, activate=ReLU() if act else None)


def bottleneck(in_channels, out_channels, stride=1, mixer="involution", norm="BatchNorm2d",
               **involution_options) -> Residual:
    """``Bottleneck``'s description (``reference/rednet.py``): the same children, names and shortcut rule."""
    mid = out_channels // EXPANSION
    if mixer == "involution":
        spatial = involution(mid, stride=stride, **involution_options)
    else:
        spatial = Conv(mid, mid, (3, 3), (stride, stride), (1, 1))
    main = sequence(conv1=Conv(in_channels, mid), bn1=BatchNorm(mid, norm), relu1=ReLU(), conv2=spatial,
                    bn2=BatchNorm(mid, norm), relu2=ReLU(), conv3=Conv(mid, out_channels),
                    bn3=BatchNorm(out_channels, norm))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = numbered(Conv(in_channels, out_channels, stride=(stride, stride)), BatchNorm(out_channels, norm))
    return Residual(main, shortcut)


def stages(stage_blocks, stem_channels, base_channels, norm="BatchNorm2d", **block_options) -> list:
    """``[("layer1", Sequence of bottlenecks), ...]`` as ``add_stages``: stride 2 from the second stage."""
    result = []
    in_channels, out_channels = stem_channels, base_channels * EXPANSION
    for index, blocks in enumerate(stage_blocks):
        stride = 1 if index == 0 else 2
        layer = [bottleneck(in_channels, out_channels, stride, norm=norm, **block_options)]
        layer += [bottleneck(out_channels, out_channels, 1, norm=norm, **block_options) for _ in range(blocks - 1)]
        result.append((f"layer{index + 1}", numbered(*layer)))
        in_channels, out_channels = out_channels, out_channels * 2
    return result


def classifier(backbone: Sequence, features: int, num_classes: int) -> Sequence:
    """mmcls' ``ImageClassifier``: ``backbone``, ``neck`` (global average pool), ``head.fc``."""
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    return sequence(backbone=backbone, neck=GlobalAvgPool(), head=sequence(fc=Linear(features, num_classes)))


def rednet_backbone(depth=50, kernel_size=7, group_channels=16, reduction=4, kernel_gen="bottleneck",
                    in_channels=3, stem_channels=64, base_channels=64, stage_blocks=None, stem_kernel_size=3,
                    norm="BatchNorm2d") -> Sequence:
    """``RedNet``'s ``backbone``: stem (conv, ``stem_kernel_size`` involution, BN, ReLU, conv), max pool, stages.

    ``stem_kernel_size`` is 3 in the classifier and 7 in the official detection / segmentation backbones;
    ``norm`` the type of the stem's and stages' norms (the involutions' own norms stay ``BatchNorm2d``).
    """
    stage_blocks = stage_blocks_for(depth, stage_blocks)
    options = dict(group_channels=group_channels, reduction=reduction, kernel_gen=kernel_gen)
    half = stem_channels // 2
    stem = numbered(conv_module(in_channels, half, 3, stride=2, padding=1, norm=norm),
                    involution(half, kernel_size=stem_kernel_size, **options), BatchNorm(half), ReLU(),
                    conv_module(half, stem_channels, 3, padding=1, norm=norm))
    return Sequence((("stem", stem), ("maxpool", Pool("MaxPool2d", (3, 3), (2, 2), (1, 1))),
                     *stages(stage_blocks, stem_channels, base_channels, norm=norm, mixer="involution",
                             kernel_size=kernel_size, **options)))


def resnet_backbone(depth=50, in_channels=3, stem_channels=64, base_channels=64, stage_blocks=None,
                    norm="BatchNorm2d") -> Sequence:
    """``ResNet``'s ``backbone``: 7x7/2 conv, BN, ReLU, 3x3/2 max pool, stages of 3x3-conv bottlenecks."""
    stage_blocks = stage_blocks_for(depth, stage_blocks)
    return Sequence((("conv1", Conv(in_channels, stem_channels, (7, 7), (2, 2), (3, 3))),
                     ("bn1", BatchNorm(stem_channels, norm)), ("relu", ReLU()),
                     ("maxpool", Pool("MaxPool2d", (3, 3), (2, 2), (1, 1))),
                     *stages(stage_blocks, stem_channels, base_channels, norm=norm, mixer="conv")))


def backbone_width(stage_blocks, base_channels) -> int:
    """Output channels of the last stage."""
    return base_channels * EXPANSION * 2 ** (len(stage_blocks) - 1)


def rednet(depth=50, num_classes=1000, kernel_size=7, group_channels=16, reduction=4, kernel_gen="bottleneck",
           in_channels=3, stem_channels=64, base_channels=64, stage_blocks=None) -> Sequence:
    """``RedNet(...)``'s description: the constructor's arguments (weights' dtype, seed and backend aside)."""
    backbone = rednet_backbone(depth, kernel_size, group_channels, reduction, kernel_gen, in_channels,
                               stem_channels, base_channels, stage_blocks)
    return classifier(backbone, backbone_width(stage_blocks_for(depth, stage_blocks), base_channels), num_classes)


def resnet(depth=50, num_classes=1000, in_channels=3, stem_channels=64, base_channels=64,
           stage_blocks=None) -> Sequence:
    """``ResNet(...)``'s description."""
    backbone = resnet_backbone(depth, in_channels, stem_channels, base_channels, stage_blocks)
    return classifier(backbone, backbone_width(stage_blocks_for(depth, stage_blocks), base_channels), num_classes)


# -- reading a built reference module ----------------------------------------------------------------------------
def describe(module):
    """The description of a built reference module (``RedNet``, ``Bottleneck``, ``Conv2d``...), from its attributes.

    Raises
    ------
    TypeError
        A module type without a rule (a subclass may compute something else, so types match exactly).
    """
    from .activation import ReLU as ReLUModule
    from .conv import Conv2d
    from .involution_layer import Involution2d
    from .linear import Linear as LinearModule
    from .module import Chain
    from .norm import BatchNorm2d
    from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
    from .rednet import Bottleneck

    kind = type(module)
    if kind is Conv2d:
        return Conv(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    bias=module.bias is not None)
    if kind is LinearModule:
        return Linear(module.in_features, module.out_features, module.bias is not None)
    if kind is BatchNorm2d:
        return BatchNorm(module.num_features)
    if kind is ReLUModule:
        return ReLU()
    if kind in (MaxPool2d, AvgPool2d):
        return Pool(kind.__name__, module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if kind is GlobalAvgPool2d:
        return GlobalAvgPool()
    if kind is Involution2d:
        return involution(module.channels, module.kernel_size, module.stride, module.group_channels,
                          module.reduction, module.kernel_gen, module.dilation)
    if kind is Bottleneck:
        names = {id(child): name for name, child in module._modules.items()}
        main = Sequence(tuple((names[id(child)], describe(child)) for child in module.residual()))
        shortcut = describe(module.downsample) if "downsample" in module._modules else None
        return Residual(main, shortcut)
    if isinstance(module, Chain) and kind.forward is Chain.forward:  # Sequential, ConvModule, classifiers
        return Sequence(tuple((name, describe(child)) for name, child in module._modules.items()))
    raise TypeError(f"count: no rule for {kind.__name__}; known: Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, "
                    f"AvgPool2d, GlobalAvgPool2d, Involution2d, Bottleneck and plain Chain containers")
