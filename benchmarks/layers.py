"""RedNet-50's involution layers at 224x224 input, shared by the CPU and CUDA benchmarks and their tests."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from involution.spec import Geometry, check_geometry, output_size


@dataclass(frozen=True)
class Layer:
    """One involution of RedNet-50 at 224x224 input: ``channels`` at ``size x size``, ``kernel x kernel`` taps."""

    channels: int
    size: int
    stride: int
    kernel: int = 7
    group_channels: int = 16


# The stem's 3x3 involution on 32 channels at 112x112, then the 7x7 involution of each stage's blocks
# (stride 2 in the first block of stages 2-4), 16 channels per group, padding (K-1)//2.
REDNET_LAYERS = (
    Layer(32, 112, 1, kernel=3),
    Layer(64, 56, 1),
    Layer(128, 56, 2),
    Layer(128, 28, 1),
    Layer(256, 28, 2),
    Layer(256, 14, 1),
    Layer(512, 14, 2),
    Layer(512, 7, 1),
)


def layer_name(layer: Layer) -> str:
    """``"64@56 K7 s1"``: channels @ input size, kernel, stride."""
    return f"{layer.channels}@{layer.size} K{layer.kernel} s{layer.stride}"


def layer_geometry(layer: Layer, batch: int) -> Geometry:
    """The validated geometry of ``layer`` at ``batch``."""
    padding = (layer.kernel - 1) // 2
    out = output_size(layer.size, layer.kernel, layer.stride, padding, 1)
    groups = layer.channels // layer.group_channels
    return check_geometry((batch, layer.channels, layer.size, layer.size),
                          (batch, groups, layer.kernel, layer.kernel, out, out), layer.stride, padding, 1)


def random_inputs(geometry: Geometry, dtype, seed: int = 0):
    """Standard normal ``(x, kernel, grad_out)`` of ``geometry`` as ``dtype`` ndarrays."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype)
                 for shape in (geometry.x_shape, geometry.kernel_shape, geometry.out_shape))
