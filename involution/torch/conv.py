"""``InvolutionConv2d``: an involution with ``torch.nn.Conv2d``'s constructor, to take a convolution's place."""
from __future__ import annotations

import torch
from torch import nn

from involution.spec import check_int, pair

from .models import Involution2d

# The official RedNet's channels per kernel group and bottleneck reduction (Li et al., CVPR 2021; mmcls configs).
MAX_GROUP_CHANNELS, MAX_REDUCTION = 16, 4


def largest_divisor(channels: int, at_most: int) -> int:
    """The largest divisor of ``channels`` that is ``<= at_most`` (1 divides every count)."""
    return max(d for d in range(1, min(channels, at_most) + 1) if channels % d == 0)


def default_groups(channels: int) -> int:
    """Kernel groups for ``channels``: ``channels // d`` for the largest divisor ``d <= 16`` of ``channels``.

    The official 16 channels per group where 16 divides ``channels`` (``G = C / 16``), else the largest group
    size that does, so any channel count works: 24 -> 2 groups of 12, 3 -> 1 group of 3, 17 -> 17 groups of 1.
    """
    return channels // largest_divisor(channels, MAX_GROUP_CHANNELS)


class InvolutionConv2d(nn.Module):
    """An involution shaped like ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation)``.

    ``x (B, in_channels, H, W) -> (B, out_channels, Ho, Wo)``, ``Ho = ceil(H / sh)``, ``Wo = ceil(W / sw)`` (the
    sizes of a convolution with the "same" padding ``dilation * (K - 1) // 2``): child ``involution``, an
    :class:`~involution.torch.Involution2d` on ``in_channels`` (kernel generated from the input), then, where the
    channel counts differ, child ``projection``, a 1x1 ``nn.Conv2d(in_channels, out_channels, bias=bias)``
    (spatial mixing then channel mixing, as a depthwise-separable convolution). Swap it for a convolution::

        for name, child in model.named_children():          # e.g. a torchvision ResNet's 3x3 convolutions
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
                setattr(model, name, InvolutionConv2d(child.in_channels, child.out_channels, 3, child.stride))

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (h, w) pair of ints
        Odd (an involution's kernel is centred on its output pixel).
    stride, dilation : int or (h, w) pair of ints
    padding : None, int or (h, w) pair of ints
        ``None``: ``dilation * (K - 1) // 2``, the only padding an involution has (its kernel is generated at the
        centre pixel); given (as a convolution's constructor call gives it), it must equal that value.
    groups : int or None
        Kernel groups ``G`` (channels ``c`` share kernel ``c // (C / G)``); must divide ``in_channels``.
        ``None``: :func:`default_groups` (16 channels per group where 16 divides ``in_channels``).
    reduction : int or None
        The kernel generator's ``C -> C // reduction`` bottleneck; must divide ``in_channels``
        (``kernel_gen="linear"`` has no bottleneck). ``None``: the largest divisor ``<= 4`` of ``in_channels``
        (the official 4 where 4 divides it; 3 channels: 3).
    kernel_gen : {"bottleneck", "linear"}
    bias : bool
        Bias of the projection (as ``nn.Conv2d``'s ``bias``). Equal channel counts have no projection, and an
        involution has no bias of its own: there the output has none (a BatchNorm after it, as in RedNet and
        YOLO's ``Conv`` blocks, has one).
    backend : {"fast", "taps"} or None
        The op's torch backend (:class:`~involution.torch.Involution2d`).

    Raises
    ------
    TypeError, ValueError
        Named errors for any argument out of range: a channel count that is not a positive int, ``padding`` that
        is not the "same" padding, ``groups`` not dividing ``in_channels``, and those of ``Involution2d``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=None, dilation=1, groups=None,
                 reduction=None, kernel_gen="bottleneck", bias=True, backend=None):
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        groups = default_groups(in_channels) if groups is None else check_int(groups, "groups", minimum=1)
        if in_channels % groups:
            raise ValueError(f"groups must divide in_channels ({in_channels}), got {groups}")
        if reduction is None:
            reduction = largest_divisor(in_channels, MAX_REDUCTION)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.involution = Involution2d(in_channels, kernel_size, stride, in_channels // groups, reduction,
                                       kernel_gen, dilation, backend)
        if padding is not None and pair(padding, "padding", minimum=0) != self.involution.padding:
            raise ValueError(f"padding must be None or the same padding dilation * (kernel_size - 1) // 2 = "
                             f"{self.involution.padding}, got {padding}")
        if out_channels != in_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = self.involution.kernel_size, self.involution.stride
        self.padding, self.dilation, self.groups = self.involution.padding, self.involution.dilation, groups

    def set_backend(self, backend: str | None) -> None:
        """Use torch backend ``backend`` ("fast", "taps"; ``None``: the fastest available) for the op from now on."""
        self.involution.set_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.involution(x)
        return self.projection(out) if "projection" in self._modules else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")

