"""The involution op in readable NumPy: forward and its hand-derived backward (see docs/backward.md).

The op is computed tap by tap: tap ``(u, v)`` of every output is a strided slice of ``x`` (zero where it falls
on the padding), so memory is a few arrays of the output's size whatever the padding or dilation -- a dilation
of 100000 with a 1x1 output costs what a dilation of 1 does.
"""
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


def _axis_slices(size: int, out_size: int, offset: int, stride: int) -> tuple[slice, slice]:
    """``(outputs, inputs)``: the outputs ``i`` whose input index ``i*stride + offset`` lies in ``[0, size)``
    (a contiguous run, since the index grows with ``i``), and those input indices, as slices."""
    first = max(0, -(offset // stride))  # smallest i >= 0 with i*stride + offset >= 0
    end = min(out_size, (size - 1 - offset) // stride + 1)  # one past the largest i with index <= size - 1
    if end <= first:
        return slice(0, 0), slice(0, 0)
    start = first * stride + offset
    return slice(first, end), slice(start, start + (end - first - 1) * stride + 1, stride)


def tap_slices(geometry: Geometry, u: int, v: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where tap ``(u, v)`` reads inside ``x``: ``((out_rows, out_cols), (x_rows, x_cols))``.

    Output ``(i, j)`` reads ``x[..., i*sh + u*dh - ph, j*sw + v*dw - pw]``; for the outputs in
    ``[out_rows, out_cols]`` that position is ``x[..., x_rows, x_cols]`` (same shape), every other output's tap
    falls on the zero padding (or, for a ceil-mode pool, past the input's end).
    """
    g = geometry
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    out_rows, x_rows = _axis_slices(g.height, g.out_h, u * dh - ph, sh)
    out_cols, x_cols = _axis_slices(g.width, g.out_w, v * dw - pw, sw)
    return (out_rows, out_cols), (x_rows, x_cols)


def read_tap(x: np.ndarray, geometry: Geometry, u: int, v: int) -> np.ndarray:
    """Tap ``(u, v)`` of every output, ``x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``, as ``(B, C, Ho, Wo)``.

    Zero where the tap falls on the padding; no padded copy of ``x`` is made.
    """
    tap = np.zeros(geometry.out_shape, x.dtype)
    (out_rows, out_cols), (x_rows, x_cols) = tap_slices(geometry, u, v)
    tap[:, :, out_rows, out_cols] = x[:, :, x_rows, x_cols]
    return tap


def scatter_taps(tap_gradient, geometry: Geometry, dtype) -> np.ndarray:
    """Adjoint of :func:`read_tap` summed over the taps: the gradient ``(B, C, H, W)`` of the input.

    ``tap_gradient(u, v)`` is the gradient ``(B, C, Ho, Wo)`` of tap ``(u, v)``; the part that read ``x`` is
    added onto it, the part that read padding is dropped. Serves the op's ``grad_x``, ``Conv2d``'s col2im and
    the pools' backward.
    """
    g = geometry
    grad_x = np.zeros(g.x_shape, dtype)
    for u in range(g.kernel_h):
        for v in range(g.kernel_w):
            (out_rows, out_cols), (x_rows, x_cols) = tap_slices(g, u, v)
            # One tap reads each (row, col) of its strided slice once, so += on the view is exact.
            grad_x[:, :, x_rows, x_cols] += tap_gradient(u, v)[:, :, out_rows, out_cols]
    return grad_x


def _grouped(array: np.ndarray, g: Geometry) -> np.ndarray:
    """``(B, C, Ho, Wo)`` viewed as ``(B, G, C//G, Ho, Wo)``: the channels of each group together."""
    return array.reshape(g.batch, g.groups, g.group_channels, g.out_h, g.out_w)


def involution2d(x, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Involution: a spatially varying kernel per group, shared by the group's channels.

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``
    with ``g = c // (C // G)`` and ``x_pad`` the input zero-padded by ``padding``. Every product is formed,
    padded taps included, so an infinite kernel weight on a padded tap gives ``inf * 0 = NaN`` (docs/policy.md).

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W), float32 or float64
    kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo), same dtype as ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
        ``Ho = (H + 2*ph - dh*(Kh-1) - 1) // sh + 1``, likewise ``Wo``.

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``; memory: a few arrays of this size besides the inputs.

    Raises
    ------
    TypeError, ValueError
        As :func:`involution.spec.check_involution2d`.
    """
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out = np.zeros((g.batch, g.groups, g.group_channels, g.out_h, g.out_w), x.dtype)
    for u in range(g.kernel_h):
        for v in range(g.kernel_w):
            out += kernel[:, :, None, u, v] * _grouped(read_tap(x, g, u, v), g)
    return out.reshape(g.out_shape)


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """Gradients of ``involution2d`` with respect to ``x`` and ``kernel``.

    ``grad_kernel[b, g, u, v, i, j] = sum_{c in g} grad_out[b, c, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``;
    ``grad_x`` scatters ``kernel[b, g, u, v, i, j] * grad_out[b, c, i, j]`` back to
    ``x_pad[b, c, i*sh + u*dh, j*sw + v*dw]`` and drops what lands on the padding.

    Parameters
    ----------
    grad_out : ndarray, shape (B, C, Ho, Wo)
    x, kernel, stride, padding, dilation : as in :func:`involution2d`

    Returns
    -------
    grad_x : ndarray, shape (B, C, H, W)
    grad_kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo)

    Raises
    ------
    TypeError, ValueError
        As :func:`involution.spec.check_involution2d_backward`.
    """
    grad_out, x, kernel, g = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_grouped = _grouped(grad_out, g)
    grad_kernel = np.empty(kernel.shape, x.dtype)
    for u in range(g.kernel_h):
        for v in range(g.kernel_w):
            tap = _grouped(read_tap(x, g, u, v), g)
            grad_kernel[:, :, u, v] = np.einsum("bgcij,bgcij->bgij", grad_grouped, tap)  # sum over the group

    def tap_gradient(u, v):
        return (kernel[:, :, None, u, v] * grad_grouped).reshape(g.out_shape)

    return scatter_taps(tap_gradient, g, x.dtype), grad_kernel
