"""RedNet (Li et al., CVPR 2021) in NumPy: the involution bottleneck, the residual stages and the classifier.

Layer list of ``RedNet(depth)``, as the official mmcls model (state-dict keys identical):

* ``backbone.stem``: ``ConvModule(3, stem/2, 3, stride 2, padding 1)`` -> ``Involution2d(stem/2, kernel 3)``
  -> ``BatchNorm2d(stem/2)`` -> ``ReLU`` -> ``ConvModule(stem/2, stem, 3, padding 1)``;
* ``backbone.maxpool``: ``MaxPool2d(3, 2, 1)``;
* ``backbone.layer1..layer4``: ``STAGE_BLOCKS[depth]`` bottlenecks each, output widths
  ``base_channels * 4 * (1, 2, 4, 8)``, stride ``(1, 2, 2, 2)`` on the first block's involution;
* ``neck``: ``GlobalAvgPool2d``; ``head.fc``: ``Linear(base_channels * 32, num_classes)``.

A bottleneck is ``conv1`` (1x1) -> ``bn1`` -> ReLU -> ``conv2`` (``Involution2d(mid, kernel_size, stride)``, or a
3x3 conv for ResNet) -> ``bn2`` -> ReLU -> ``conv3`` (1x1) -> ``bn3`` -> ``+ downsample(x)`` -> ReLU, with
``mid = out_channels // 4``.

Every layer pads, so any input of at least 1x1 fits; strided involutions use a ceil-mode pool, so odd sizes
work too (the official floor-mode pool crashes on them; even sizes give identical results). An empty batch gives
empty logits ``(0, num_classes)``.
"""
from __future__ import annotations

import numpy as np

from involution.options import (EXPANSION, MAX_SEED, STAGE_BLOCKS, check_classifier_options,  # noqa: F401
                                stage_blocks_for)
from involution.spec import check_int, pair

from .conv import Conv2d, ConvModule
from .involution_layer import Involution2d
from .linear import Linear
from .module import Chain, Sequential
from .norm import BatchNorm2d
from .activation import ReLU
from .init import parameter_dtype
from .pool import GlobalAvgPool2d, MaxPool2d

MIXERS = ("involution", "conv")


class Bottleneck(Chain):
    """Residual bottleneck ``x (B, in_channels, H, W) -> (B, out_channels, ceil(H/stride), ceil(W/stride))``.

    Children ``conv1, bn1, conv2, bn2, conv3, bn3[, downsample]``; ``conv2`` is the spatial mixer:
    ``Involution2d(mid, stride=stride, **involution_options)`` (RedNet) or ``Conv2d(mid, mid, 3, stride, 1)``
    (``mixer="conv"``, ResNet). ``downsample = Sequential(Conv2d 1x1/stride, BatchNorm2d)`` when the shape changes.
    ``involution_options``: ``kernel_size, group_channels, reduction, kernel_gen, dilation, backend``.
    """

    def __init__(self, in_channels, out_channels, stride=1, expansion=EXPANSION, mixer="involution", *,
                 dtype=np.float32, rng=None, **involution_options):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        expansion = check_int(expansion, "expansion", minimum=1)
        if out_channels % expansion:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by expansion ({expansion})")
        mid, stride = out_channels // expansion, pair(stride, "stride", minimum=1)
        self.in_channels, self.out_channels, self.stride, self.mixer = in_channels, out_channels, stride, mixer
        self.conv1 = Conv2d(in_channels, mid, 1, dtype=dtype, rng=rng)
        self.bn1 = BatchNorm2d(mid, dtype=dtype)
        if mixer == "involution":
            self.conv2 = Involution2d(mid, stride=stride, dtype=dtype, rng=rng, **involution_options)
        else:
            self.conv2 = Conv2d(mid, mid, 3, stride, padding=1, dtype=dtype, rng=rng)
        self.bn2 = BatchNorm2d(mid, dtype=dtype)
        self.conv3 = Conv2d(mid, out_channels, 1, dtype=dtype, rng=rng)
        self.bn3 = BatchNorm2d(out_channels, dtype=dtype)
        self.bn3.weight.data[:] = 0  # mmcls' zero_init_residual: each block starts as its shortcut
        if stride != (1, 1) or in_channels != out_channels:
            self.downsample = Sequential(Conv2d(in_channels, out_channels, 1, stride, dtype=dtype, rng=rng),
                                         BatchNorm2d(out_channels, dtype=dtype))
        self.relu1, self.relu2, self.relu3 = ReLU(), ReLU(), ReLU()

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, mixer={self.mixer!r}"

    def residual(self):
        """The main branch in order (the ReLUs are children too, but hold no state to save)."""
        return [self.conv1, self.bn1, self.relu1, self.conv2, self.bn2, self.relu2, self.conv3, self.bn3]

    def forward(self, x):
        out = x
        for module in self.residual():
            out = module(out)
        identity = self.downsample(x) if "downsample" in self._modules else x
        return self.relu3(out + identity)

    def backward(self, grad_output):
        grad_sum = self.relu3.backward(grad_output)
        grad_x = grad_sum
        for module in reversed(self.residual()):
            grad_x = module.backward(grad_x)
        shortcut = self.downsample.backward(grad_sum) if "downsample" in self._modules else grad_sum
        return grad_x + shortcut


def add_stages(backbone, stage_blocks, stem_channels, base_channels, **block_options) -> int:
    """Add ``layer1``.. to ``backbone``: widths ``base_channels * 4 * 2**i``, stride 2 from the second stage.

    Returns the output width of the last stage.
    """
    in_channels, out_channels = stem_channels, base_channels * EXPANSION
    for index, blocks in enumerate(stage_blocks):
        stride = 1 if index == 0 else 2
        stage = [Bottleneck(in_channels, out_channels, stride, **block_options)]
        stage += [Bottleneck(out_channels, out_channels, 1, **block_options) for _ in range(blocks - 1)]
        setattr(backbone, f"layer{index + 1}", Sequential(*stage))
        in_channels, out_channels = out_channels, out_channels * 2
    return in_channels


class Classifier(Chain):
    """mmcls' ``ImageClassifier``: children ``backbone``, ``neck`` (GlobalAvgPool2d), ``head`` (child ``fc``).

    ``forward(x (B, C, H, W)) -> logits (B, num_classes)``; ``backward(grad_logits)`` fills every parameter's
    ``.grad`` and returns the gradient with respect to ``x``.
    """

    def finish(self, backbone, features, num_classes, dtype, rng) -> None:
        """Attach ``backbone``, the neck and a ``Linear(features, num_classes)`` head; name every layer."""
        self.backbone = backbone
        self.neck = GlobalAvgPool2d()
        self.head = Chain()
        self.head.fc = Linear(features, num_classes, dtype=dtype, rng=rng)
        self.name_modules()


class RedNet(Classifier):
    """RedNet image classifier, ``x (B, in_channels, H, W) -> logits (B, num_classes)``, any ``H, W >= 1``.

    Parameters
    ----------
    depth : 26, 38, 50, 101 or 152 (ignored when ``stage_blocks`` is given)
    num_classes : int >= 1
    kernel_size : int or (h, w) pair of odd ints, the kernel of every bottleneck's ``Involution2d``
    group_channels, reduction, kernel_gen : options of every ``Involution2d``
        (the stem's involution has kernel size 3 and the same other options)
    in_channels, base_channels : int >= 1
    stem_channels : even int >= 2 (the stem's first conv has ``stem_channels // 2``)
    stage_blocks : tuple of ints >= 1, optional, e.g. ``(1, 1, 1, 1)`` for a tiny model
    dtype : float32 or float64
    seed : int in ``[0, 2**64 - 1]``, seeds the initialisation (mmcls' variances)
    backend : str, a NumPy backend of :mod:`involution.backends` ("reference", "fast-cpu", "fast-cuda") for the op

    Raises
    ------
    TypeError, ValueError
        A bad option, named (:func:`stage_blocks_for`, :func:`check_classifier_options`,
        :func:`involution.reference.involution_layer.check_involution_options`).
    """

    def __init__(self, depth=50, num_classes=1000, kernel_size=7, group_channels=16, reduction=4,
                 kernel_gen="bottleneck", in_channels=3, stem_channels=64, base_channels=64, stage_blocks=None,
                 dtype=np.float32, seed=0, backend="reference"):
        super().__init__()
        stage_blocks = stage_blocks_for(depth, stage_blocks)
        check_classifier_options(num_classes, stem_channels, base_channels, seed, even_stem=True)
        parameter_dtype(dtype)
        rng = np.random.default_rng(seed)
        options = dict(group_channels=group_channels, reduction=reduction, kernel_gen=kernel_gen, backend=backend,
                       dtype=dtype, rng=rng)
        half = stem_channels // 2
        backbone = Chain()
        backbone.stem = Sequential(ConvModule(in_channels, half, 3, stride=2, padding=1, dtype=dtype, rng=rng),
                                   Involution2d(half, kernel_size=3, **options),
                                   BatchNorm2d(half, dtype=dtype),
                                   ReLU(),
                                   ConvModule(half, stem_channels, 3, padding=1, dtype=dtype, rng=rng))
        backbone.maxpool = MaxPool2d(3, 2, 1)
        features = add_stages(backbone, stage_blocks, stem_channels, base_channels, mixer="involution",
                              kernel_size=kernel_size, **options)
        self.finish(backbone, features, num_classes, dtype, rng)
