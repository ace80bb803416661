"""Pooling layers: ``MaxPool2d`` (the stem's 3x3/2), ``AvgPool2d`` (ceil mode, for strided involution) and
``GlobalAvgPool2d`` (the classifier neck)."""
from __future__ import annotations

import numpy as np

from .module import Module
from .op import scatter_taps, windows
from involution.spec import Geometry, output_size, pair


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, torch's rule: in ceil mode a last partial window is kept when it
    starts inside the input or the left padding."""
    if not ceil_mode:
        return output_size(size, kernel, stride, padding, 1)
    out = -(-(size + 2 * padding - kernel) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


class _Pool2d(Module):
    """Shared size checks and window geometry of the 2-D pooling layers."""

    def __init__(self, kernel_size, stride, padding, ceil_mode):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.ceil_mode = ceil_mode
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding must be at most half of kernel_size, got padding {self.padding} "
                             f"and kernel_size {self.kernel_size}")

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")

    def geometry(self, x_shape) -> Geometry:
        batch, channels, height, width = x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h = pool_output_size(height, kh, sh, ph, self.ceil_mode)
        out_w = pool_output_size(width, kw, sw, pw, self.ceil_mode)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"{self.describe()}: input {height}x{width} is smaller than the {kh}x{kw} window "
                             f"with padding {self.padding} can take (output would be {out_h}x{out_w})")
        return Geometry(batch, channels, 1, height, width, kh, kw, out_h, out_w, self.stride, self.padding, (1, 1))

    def padded(self, x: np.ndarray, g: Geometry, value: float) -> np.ndarray:
        """``x`` padded by ``padding`` on the left/top and up to the last window's end on the right/bottom."""
        (ph, pw), (sh, sw) = g.padding, g.stride
        bottom = max((g.out_h - 1) * sh + g.kernel_h - g.height - ph, 0)
        right = max((g.out_w - 1) * sw + g.kernel_w - g.width - pw, 0)
        return np.pad(x, ((0, 0), (0, 0), (ph, bottom), (pw, right)), constant_values=value)


class MaxPool2d(_Pool2d):
    """Max over each window (padding never wins); the gradient goes to the first maximum in row-major order,
    as in torch. ``x (B, C, H, W) -> (B, C, Ho, Wo)``, floor-mode output size."""

    def __init__(self, kernel_size=3, stride=2, padding=1):
        super().__init__(kernel_size, stride, padding, ceil_mode=False)

    def forward(self, x):
        x = self.check_input(x)
        g = self.geometry(x.shape)
        x_padded = self.padded(x, g, -np.inf)
        taps = windows(x_padded, g).reshape(g.batch, g.channels, g.kernel_h * g.kernel_w, g.out_h, g.out_w)
        winner = taps.argmax(axis=2)
        self._cache = (g, winner)
        return np.take_along_axis(taps, winner[:, :, None], axis=2)[:, :, 0]

    def backward(self, grad_output):
        g, winner = self.saved()
        taps = np.arange(g.kernel_h * g.kernel_w).reshape(g.kernel_h, g.kernel_w, 1, 1)
        grad_taps = np.where(winner[:, :, None, None] == taps, grad_output[:, :, None, None], 0)
        return scatter_taps(lambda u, v: grad_taps[:, :, u, v], g, grad_output.dtype)


class AvgPool2d(_Pool2d):
    """Mean over each window of in-bounds elements (``count_include_pad=False``), ceil mode by default.

    With ``kernel_size == stride == s`` and ceil mode the output is ``ceil(H / s)``, which is the involution
    op's output size for odd kernels with "same" padding at stride ``s`` -- for odd H too.
    """

    def __init__(self, kernel_size, stride=None, ceil_mode=True):
        super().__init__(kernel_size, kernel_size if stride is None else stride, 0, ceil_mode)

    def divisor(self, g: Geometry) -> np.ndarray:
        """``(Ho, Wo)`` number of in-bounds elements under each window."""
        rows = np.minimum(np.arange(g.out_h) * g.stride[0] + g.kernel_h, g.height) - np.arange(g.out_h) * g.stride[0]
        cols = np.minimum(np.arange(g.out_w) * g.stride[1] + g.kernel_w, g.width) - np.arange(g.out_w) * g.stride[1]
        return np.outer(rows, cols)

    def forward(self, x):
        x = self.check_input(x)
        g = self.geometry(x.shape)
        x_padded = self.padded(x, g, 0)
        divisor = self.divisor(g).astype(x.dtype)
        self._cache = (g, divisor)
        return windows(x_padded, g).sum(axis=(3, 4))[:, 0] / divisor

    def backward(self, grad_output):
        g, divisor = self.saved()
        grad_mean = grad_output / divisor
        grad_taps = np.broadcast_to(grad_mean[:, :, None, None], grad_mean.shape[:2] + (g.kernel_h, g.kernel_w)
                                    + grad_mean.shape[2:])
        return scatter_taps(lambda u, v: grad_taps[:, :, u, v], g, grad_output.dtype)


class GlobalAvgPool2d(Module):
    """Mean over space: ``x (B, C, H, W) -> (B, C)`` (mmcls' ``GlobalAveragePooling`` neck)."""

    def forward(self, x):
        x = self.check_input(x)
        self._cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, grad_output):
        shape = self.saved()
        grad = grad_output / (shape[2] * shape[3])
        return np.broadcast_to(grad[:, :, None, None], shape).copy()
