"""``Involution2d``: the involution layer of RedNet -- a kernel generated from each pixel, then the op.

Kernel generation, as the official code (d-li14/involution, mmcls ``involution``):

* ``avgpool``: ``AvgPool2d(stride, stride, ceil_mode=True)`` when ``stride > 1`` (brings the input to the output grid);
* ``conv1``: ``ConvModule(C, C // reduction, 1)`` with BN and ReLU, no bias (only for ``kernel_gen="bottleneck"``);
* ``conv2``: ``ConvModule(C // reduction, K*K*G, 1, bias=True, norm=False, act=False)`` (from ``C`` channels
  for ``kernel_gen="linear"``, the paper's ablation with a single linear map);
* the ``(B, K*K*G, Ho, Wo)`` result is read as the kernel ``(B, G, K, K, Ho, Wo)`` of
  ``involution2d(x, kernel, stride, padding=(K-1)//2 * dilation, dilation)``.

Difference from the official code: it pools with floor-mode ``nn.AvgPool2d(stride, stride)``, whose output
``floor(H / s)`` differs from the op's ``ceil(H / s)`` for odd sizes, so it crashes there. The ceil-mode pool
(divisor = in-bounds elements) gives the op's size for every input; for even sizes the two are identical.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from involution import backends
from involution.spec import check_int, same_padding

from .conv import ConvModule
from .module import Module
from .pool import AvgPool2d

KERNEL_GENERATORS = ("bottleneck", "linear")


@dataclass(frozen=True)
class InvolutionOptions:
    """Checked constructor options of an involution layer and the sizes derived from them."""

    channels: int
    kernel_size: int
    stride: int
    dilation: int
    group_channels: int
    reduction: int
    kernel_gen: str

    @property
    def groups(self) -> int:
        """``G = C // group_channels``, the number of kernels per pixel."""
        return self.channels // self.group_channels

    @property
    def hidden(self) -> int:
        """Channels into ``conv2``: ``C // reduction`` after the bottleneck's ``conv1``, else ``C``."""
        return self.channels // self.reduction if self.kernel_gen == "bottleneck" else self.channels

    @property
    def taps(self) -> int:
        """Channels out of ``conv2``: ``K * K * G``, one kernel of ``K x K`` taps per group."""
        return self.kernel_size * self.kernel_size * self.groups


def check_involution_options(channels, kernel_size, stride, group_channels, reduction, kernel_gen,
                             dilation) -> InvolutionOptions:
    """Validate the options of an involution layer (NumPy or torch) and derive its sizes.

    Parameters
    ----------
    channels, kernel_size, stride, reduction, dilation : int
        Each ``>= 1``; ``kernel_size`` odd; ``channels`` divisible by ``reduction`` for ``"bottleneck"``.
    group_channels : int or "all"
        Divides ``channels``; ``"all"`` means ``channels`` (one group).
    kernel_gen : "bottleneck" or "linear"

    Returns
    -------
    InvolutionOptions
        The options as ints, with ``groups``, ``hidden`` and ``taps``.

    Raises
    ------
    TypeError
        An option that is not an int (``group_channels`` may also be ``"all"``).
    ValueError
        An option out of range, an even ``kernel_size``, a divisibility that fails, an unknown ``kernel_gen``.
    """
    channels = check_int(channels, "channels", minimum=1)
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    stride = check_int(stride, "stride", minimum=1)
    dilation = check_int(dilation, "dilation", minimum=1)
    reduction = check_int(reduction, "reduction", minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
    if group_channels == "all":
        group_channels = channels
    group_channels = check_int(group_channels, "group_channels", minimum=1)
    if channels % group_channels:
        raise ValueError(f"channels ({channels}) must be divisible by group_channels ({group_channels})")
    if kernel_gen not in KERNEL_GENERATORS:
        raise ValueError(f"kernel_gen must be one of {KERNEL_GENERATORS}, got {kernel_gen!r}")
    if kernel_gen == "bottleneck" and channels % reduction:
        raise ValueError(f"channels ({channels}) must be divisible by reduction ({reduction})")
    return InvolutionOptions(channels, kernel_size, stride, dilation, group_channels, reduction, kernel_gen)


class Involution2d(Module):
    """Involution layer: ``x (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))``.

    Parameters
    ----------
    channels : int
        ``C``, input and output channels.
    kernel_size : int
        ``K``, odd (the "same" padding ``(K-1)//2 * dilation`` keeps the size only for odd K).
    stride, dilation : int
    group_channels : int or "all"
        Channels sharing one kernel; ``G = C // group_channels`` groups (``"all"``: ``G = 1``).
    reduction : int
        ``conv1`` reduces ``C`` to ``C // reduction`` channels (bottleneck kernel generation only).
    kernel_gen : "bottleneck" or "linear"
    backend : str
        A NumPy backend of :mod:`involution.backends`: ``"reference"`` (default), ``"fast-cpu"`` or ``"fast-cuda"``.
    dtype, rng : parameter dtype and initialisation generator
    """

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1, group_channels=16, reduction: int = 4,
                 kernel_gen: str = "bottleneck", dilation: int = 1, backend: str = "reference", *,
                 dtype=np.float32, rng=None):
        super().__init__()
        options = check_involution_options(channels, kernel_size, stride, group_channels, reduction, kernel_gen,
                                           dilation)
        self.forward_op, self.backward_op = backends.functions(backend, "numpy")
        self.channels, self.kernel_size, self.stride, self.dilation = (options.channels, options.kernel_size,
                                                                       options.stride, options.dilation)
        self.group_channels, self.groups = options.group_channels, options.groups
        self.reduction, self.kernel_gen, self.backend = options.reduction, options.kernel_gen, backend
        if options.stride > 1:
            self.avgpool = AvgPool2d(options.stride, options.stride, ceil_mode=True)
        if options.kernel_gen == "bottleneck":
            self.conv1 = ConvModule(options.channels, options.hidden, 1, dtype=dtype, rng=rng)
        self.conv2 = ConvModule(options.hidden, options.taps, 1, bias=True, norm=False, act=False, dtype=dtype, rng=rng)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"group_channels={self.group_channels}, groups={self.groups}, reduction={self.reduction}, "
                f"kernel_gen={self.kernel_gen!r}, dilation={self.dilation}, backend={self.backend!r}")

    @property
    def padding(self) -> int:
        return same_padding(self.kernel_size, self.dilation)[0]

    def generator(self) -> list[Module]:
        """The kernel-generating modules in order: ``[avgpool,] [conv1,] conv2``."""
        return [child for name, child in self._modules.items() if name in ("avgpool", "conv1", "conv2")]

    def forward(self, x):
        x = self.check_input(x, self.channels)
        features = x
        for module in self.generator():
            features = module(features)
        batch, _, out_h, out_w = features.shape
        kernel = features.reshape(batch, self.groups, self.kernel_size, self.kernel_size, out_h, out_w)
        self._cache = (x, kernel)
        return self.forward_op(x, kernel, self.stride, self.padding, self.dilation)

    def backward(self, grad_output):
        x, kernel = self._cache
        grad_x, grad_kernel = self.backward_op(grad_output, x, kernel, self.stride, self.padding, self.dilation)
        grad_features = grad_kernel.reshape(kernel.shape[0], -1, *kernel.shape[4:])
        for module in reversed(self.generator()):
            grad_features = module.backward(grad_features)
        return grad_x + grad_features
