"""The involution op in readable NumPy: forward and its hand-derived backward (see docs/backward.md)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from involution.spec import Geometry, check_involution2d, check_involution2d_backward


def pad(x: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Zero-pad ``x (B, C, H, W)`` by the geometry's padding on both sides of H and W."""
    ph, pw = geometry.padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def windows(x_padded: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Read-only view ``(B, G, C//G, Kh, Kw, Ho, Wo)`` of the padded input under every kernel tap.

    ``windows[b, g, c', u, v, i, j] = x_padded[b, g*(C//G) + c', i*sh + u*dh, j*sw + v*dw]``; no copy is made.
    The output-size rule guarantees ``(Ho-1)*sh + (Kh-1)*dh < H + 2*ph``, so the view stays in bounds.
    """
    g = geometry
    (sh, sw), (dh, dw) = g.stride, g.dilation
    sb, sc, sy, sx = x_padded.strides
    shape = (g.batch, g.groups, g.group_channels, g.kernel_h, g.kernel_w, g.out_h, g.out_w)
    strides = (sb, g.group_channels * sc, sc, dh * sy, dw * sx, sh * sy, sw * sx)
    return as_strided(x_padded, shape, strides, writeable=False)


def scatter_windows(tap_gradient, geometry: Geometry, padded_shape, dtype) -> np.ndarray:
    """Adjoint of :func:`windows`: the gradient ``(B, C, H, W)`` of the unpadded input.

    ``tap_gradient(u, v)`` is the gradient ``(B, C, Ho, Wo)`` of tap ``(u, v)``'s view; it is added onto the
    zero array ``padded_shape`` at ``[i*sh + u*dh, j*sw + v*dw]`` and the padding is cropped.
    """
    g = geometry
    (sh, sw), (dh, dw), (ph, pw) = g.stride, g.dilation, g.padding
    grad_padded = np.zeros(padded_shape, dtype)
    for u in range(g.kernel_h):
        rows = slice(u * dh, u * dh + (g.out_h - 1) * sh + 1, sh)
        for v in range(g.kernel_w):
            cols = slice(v * dw, v * dw + (g.out_w - 1) * sw + 1, sw)
            # One tap touches each (row, col) of its strided slice once, so += on the view is exact.
            grad_padded[:, :, rows, cols] += tap_gradient(u, v)
    return grad_padded[:, :, ph:ph + g.height, pw:pw + g.width]


def involution2d(x, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Involution: a spatially varying kernel per group, shared by the group's channels.

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``
    with ``g = c // (C // G)`` and ``x_pad`` the input zero-padded by ``padding``.

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W), float32 or float64
    kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo), same dtype as ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
        ``Ho = (H + 2*ph - dh*(Kh-1) - 1) // sh + 1``, likewise ``Wo``.

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``
    """
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation)
    taps = windows(pad(x, geometry), geometry)
    out = np.einsum("bgcuvij,bguvij->bgcij", taps, kernel)
    return out.reshape(geometry.out_shape)


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """Gradients of ``involution2d`` with respect to ``x`` and ``kernel``.

    ``grad_kernel[b, g, u, v, i, j] = sum_{c in g} grad_out[b, c, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``;
    ``grad_x`` scatters ``kernel[b, g, u, v, i, j] * grad_out[b, c, i, j]`` back to
    ``x_pad[b, c, i*sh + u*dh, j*sw + v*dw]`` and crops the padding.

    Parameters
    ----------
    grad_out : ndarray, shape (B, C, Ho, Wo)
    x, kernel, stride, padding, dilation : as in :func:`involution2d`

    Returns
    -------
    grad_x : ndarray, shape (B, C, H, W)
    grad_kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo)
    """
    grad_out, x, kernel, g = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_out = grad_out.reshape(g.batch, g.groups, g.group_channels, g.out_h, g.out_w)
    x_padded = pad(x, g)
    grad_kernel = np.einsum("bgcij,bgcuvij->bguvij", grad_out, windows(x_padded, g))

    def tap_gradient(u, v):
        return (kernel[:, :, None, u, v] * grad_out).reshape(g.out_shape)

    grad_x = scatter_windows(tap_gradient, g, x_padded.shape, x.dtype)
    return np.ascontiguousarray(grad_x), grad_kernel
