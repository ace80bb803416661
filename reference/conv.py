"""Convolution layers: ``Conv2d`` (1x1 as a matmul, kxk by im2col) and mmcv's ``ConvModule`` (conv, BN, ReLU)."""
from __future__ import annotations

import numpy as np

from .activation import ReLU
from .init import default_rng, kaiming_fan_out, parameter_dtype
from .module import Chain, Module, Parameter
from .norm import BatchNorm2d
from .op import pad, scatter_taps, windows
from involution.spec import Geometry, check_int, output_size, pair


class Conv2d(Module):
    """2-D convolution without groups or dilation, as ``torch.nn.Conv2d``.

    ``out[b, o, i, j] = bias[o] + sum_{c, u, v} weight[o, c, u, v] * x_pad[b, c, i*sh + u, j*sw + v]``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (h, w) pair
    bias : bool
    dtype : float32 or float64
    rng : numpy Generator for the Kaiming fan-out initialisation (seed 0 when None)

    Shapes: ``x (B, in_channels, H, W) -> (B, out_channels, Ho, Wo)``, ``weight (O, I, kh, kw)``, ``bias (O,)``;
    ``B = 0`` gives an empty output.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 dtype=np.float32, rng=None):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.out_channels = check_int(out_channels, "out_channels", minimum=1)
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        dtype = parameter_dtype(dtype)
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self.weight = Parameter(kaiming_fan_out(shape, default_rng(rng), dtype))
        self.bias = Parameter(np.zeros(self.out_channels, dtype)) if bias else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")

    def geometry(self, x_shape) -> Geometry:
        """The windows of this convolution over an input of ``x_shape`` (one group holding every channel)."""
        batch, channels, height, width = x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = output_size(height, kh, sh, ph, 1), output_size(width, kw, sw, pw, 1)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.describe()}: input {height}x{width} is smaller than the {kh}x{kw} kernel "
                             f"with padding {self.padding} can take (output would be {out_h}x{out_w})")
        return Geometry(batch, channels, 1, height, width, kh, kw, out_h, out_w, self.stride, self.padding, (1, 1))

    def is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.padding == (0, 0)

    def forward(self, x):
        x = self.check_input(x, self.in_channels)
        g = self.geometry(x.shape)
        if self.is_pointwise():
            sh, sw = self.stride
            cols = x[:, :, ::sh, ::sw].reshape(g.batch, g.channels, g.out_h * g.out_w)
        else:
            patch = g.channels * g.kernel_h * g.kernel_w
            cols = windows(pad(x, g), g).reshape(g.batch, patch, g.out_h * g.out_w)  # im2col (a copy)
        out = np.matmul(self.weight.data.reshape(self.out_channels, -1), cols)
        if self.bias is not None:
            out += self.bias.data[:, None]
        self._cache = (g, cols)
        return out.reshape(g.batch, self.out_channels, g.out_h, g.out_w)

    def backward(self, grad_output):
        g, cols = self.saved()
        grad = grad_output.reshape(g.batch, self.out_channels, g.out_h * g.out_w)
        grad_weight = np.tensordot(grad, cols, axes=([0, 2], [0, 2]))  # sum_b grad[b] @ cols[b].T
        self.weight.accumulate(grad_weight.reshape(self.weight.shape))
        if self.bias is not None:
            self.bias.accumulate(grad.sum(axis=(0, 2)))
        grad_cols = np.matmul(self.weight.data.reshape(self.out_channels, -1).T, grad)
        if self.is_pointwise():
            if self.stride == (1, 1):
                return grad_cols.reshape(g.x_shape)
            grad_x = np.zeros(g.x_shape, grad_cols.dtype)
            grad_x[:, :, ::g.stride[0], ::g.stride[1]] = grad_cols.reshape(g.out_shape)
            return grad_x
        grad_taps = grad_cols.reshape(g.batch, g.channels, g.kernel_h, g.kernel_w, g.out_h, g.out_w)  # col2im
        return scatter_taps(lambda u, v: grad_taps[:, :, u, v], g, grad_taps.dtype)


class ConvModule(Chain):
    """mmcv's ``ConvModule``: children ``conv`` (Conv2d), ``bn`` (BatchNorm2d, if ``norm``), ``activate`` (ReLU, if ``act``).

    ``bias=None`` means ``not norm`` (mmcv's ``bias="auto"``: a bias before BN is redundant).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=None, norm=True, act=True,
                 *, dtype=np.float32, rng=None):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                           bias=(not norm) if bias is None else bias, dtype=dtype, rng=rng)
        if norm:
            self.bn = BatchNorm2d(out_channels, dtype=dtype)
        if act:
            self.activate = ReLU()
