"""ResNet with bottleneck blocks in NumPy: the convolution baseline RedNet is compared with.

``backbone.conv1`` (7x7/2, 64) -> ``backbone.bn1`` -> ReLU -> ``backbone.maxpool`` (3x3/2) -> ``layer1..layer4`` of
``Bottleneck(..., mixer="conv")`` (3x3 conv carrying the stride) -> ``neck`` -> ``head.fc``; mmcls' state-dict keys
and the stage table ``STAGE_BLOCKS`` shared with RedNet.
"""
from __future__ import annotations

import numpy as np

from .activation import ReLU
from .conv import Conv2d
from .init import parameter_dtype
from .module import Chain
from .norm import BatchNorm2d
from .pool import MaxPool2d
from .rednet import Classifier, add_stages, check_classifier_options, stage_blocks_for


class ResNet(Classifier):
    """Bottleneck ResNet, ``x (B, in_channels, H, W) -> logits (B, num_classes)``; arguments as ``RedNet``'s."""

    def __init__(self, depth=50, num_classes=1000, in_channels=3, stem_channels=64, base_channels=64,
                 stage_blocks=None, dtype=np.float32, seed=0):
        super().__init__()
        stage_blocks = stage_blocks_for(depth, stage_blocks)
        check_classifier_options(num_classes, stem_channels, base_channels, seed, even_stem=False)
        parameter_dtype(dtype)
        rng = np.random.default_rng(seed)
        backbone = Chain()
        backbone.conv1 = Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, dtype=dtype, rng=rng)
        backbone.bn1 = BatchNorm2d(stem_channels, dtype=dtype)
        backbone.relu = ReLU()
        backbone.maxpool = MaxPool2d(3, 2, 1)
        features = add_stages(backbone, stage_blocks, stem_channels, base_channels, mixer="conv",
                              dtype=dtype, rng=rng)
        self.finish(backbone, features, num_classes, dtype, rng)
