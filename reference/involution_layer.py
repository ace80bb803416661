"""``Involution2d``: the involution layer of RedNet -- a kernel generated from each pixel, then the op.

Kernel generation, as the official code (d-li14/involution, mmcls ``involution``):

* ``avgpool``: ``AvgPool2d(stride, stride, ceil_mode=True)`` when a stride exceeds 1 (brings the input to the
  output grid);
* ``conv1``: ``ConvModule(C, C // reduction, 1)`` with BN and ReLU, no bias (only for ``kernel_gen="bottleneck"``);
* ``conv2``: ``ConvModule(C // reduction, Kh*Kw*G, 1, bias=True, norm=False, act=False)`` (from ``C`` channels
  for ``kernel_gen="linear"``, the paper's ablation with a single linear map);
* the ``(B, Kh*Kw*G, Ho, Wo)`` result is read as the kernel ``(B, G, Kh, Kw, Ho, Wo)`` of
  ``involution2d(x, kernel, stride, padding=(K-1)//2 * dilation, dilation)``.

``kernel_size``, ``stride`` and ``dilation`` may each be an int or an ``(h, w)`` pair (the official layer takes
ints; a pair is the same layer with separate sizes per axis, as ``nn.Conv2d``'s arguments).

Difference from the official code: it pools with floor-mode ``nn.AvgPool2d(stride, stride)``, whose output
``floor(H / s)`` differs from the op's ``ceil(H / s)`` for odd sizes, so it crashes there. The ceil-mode pool
(divisor = in-bounds elements) gives the op's size for every input; for even sizes the two are identical.
"""
from __future__ import annotations

import numpy as np

from involution import backends
from involution.options import KERNEL_GENERATORS, InvolutionOptions, check_involution_options  # noqa: F401

from .conv import ConvModule
from .module import Module
from .pool import AvgPool2d

class Involution2d(Module):
    """Involution layer: ``x (B, C, H, W) -> (B, C, ceil(H / sh), ceil(W / sw))``.

    Parameters
    ----------
    channels : int
        ``C``, input and output channels.
    kernel_size : int or (h, w) pair of ints
        ``(Kh, Kw)``, odd (the "same" padding ``(K-1)//2 * dilation`` keeps the size only for odd K).
    stride, dilation : int or (h, w) pair of ints
    group_channels : int or "all"
        Channels sharing one kernel; ``G = C // group_channels`` groups (``"all"``: ``G = 1``).
    reduction : int
        ``conv1`` reduces ``C`` to ``C // reduction`` channels (bottleneck kernel generation only).
    kernel_gen : "bottleneck" or "linear"
    backend : str
        A NumPy backend of :mod:`involution.backends`: ``"reference"`` (default), ``"fast-cpu"`` or ``"fast-cuda"``.
    dtype : float32 or float64, the parameters' dtype (and the input's)
    rng : numpy Generator of the initialisation

    Attributes ``kernel_size``, ``stride``, ``dilation`` and ``padding`` are ``(h, w)`` pairs.

    Raises
    ------
    TypeError, ValueError
        Bad options, as :func:`check_involution_options`; a dtype other than float32/float64.
    """

    def __init__(self, channels: int, kernel_size=7, stride=1, group_channels=16, reduction: int = 4,
                 kernel_gen: str = "bottleneck", dilation=1, backend: str = "reference", *,
                 dtype=np.float32, rng=None):
        super().__init__()
        options = check_involution_options(channels, kernel_size, stride, group_channels, reduction, kernel_gen,
                                           dilation)
        self.forward_op, self.backward_op = backends.functions(backend, "numpy")
        self.channels, self.kernel_size, self.stride, self.dilation = (options.channels, options.kernel_size,
                                                                       options.stride, options.dilation)
        self.padding = options.padding
        self.group_channels, self.groups = options.group_channels, options.groups
        self.reduction, self.kernel_gen, self.backend = options.reduction, options.kernel_gen, backend
        if options.strided:
            self.avgpool = AvgPool2d(options.stride, options.stride, ceil_mode=True)
        if options.kernel_gen == "bottleneck":
            self.conv1 = ConvModule(options.channels, options.hidden, 1, dtype=dtype, rng=rng)
        self.conv2 = ConvModule(options.hidden, options.taps, 1, bias=True, norm=False, act=False, dtype=dtype, rng=rng)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"group_channels={self.group_channels}, groups={self.groups}, reduction={self.reduction}, "
                f"kernel_gen={self.kernel_gen!r}, dilation={self.dilation}, backend={self.backend!r}")

    def generator(self) -> list[Module]:
        """The kernel-generating modules in order: ``[avgpool,] [conv1,] conv2``."""
        return [child for name, child in self._modules.items() if name in ("avgpool", "conv1", "conv2")]

    def generate_kernel(self, x):
        """The kernel ``(B, G, Kh, Kw, Ho, Wo)`` generated from ``x (B, C, H, W)``: the generator's
        ``(B, Kh*Kw*G, Ho, Wo)`` output read group by group, tap by tap."""
        features = x
        for module in self.generator():
            features = module(features)
        batch, _, out_h, out_w = features.shape
        return features.reshape(batch, self.groups, *self.kernel_size, out_h, out_w)

    def forward(self, x):
        x = self.check_input(x, self.channels)
        kernel = self.generate_kernel(x)
        self._cache = (x, kernel)
        return self.forward_op(x, kernel, self.stride, self.padding, self.dilation)

    def backward(self, grad_output):
        x, kernel = self.saved()
        grad_x, grad_kernel = self.backward_op(grad_output, x, kernel, self.stride, self.padding, self.dilation)
        batch, groups, kernel_h, kernel_w, out_h, out_w = kernel.shape
        grad_features = grad_kernel.reshape(batch, groups * kernel_h * kernel_w, out_h, out_w)
        for module in reversed(self.generator()):
            grad_features = module.backward(grad_features)
        return grad_x + grad_features
