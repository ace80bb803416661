"""Fast CPU involution: the reference's validation, then the best numbered numba kernel of ``cpu_kernels``.

Threads come from numba's settings (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); results are bitwise
identical from run to run and for any thread count, since every output element has one writer.
"""
from __future__ import annotations

import numpy as np

from involution.reference.shapes import Geometry, check_involution2d, check_involution2d_backward

from . import cpu_kernels

# Numbered versions of each kernel in cpu_kernels (forward_v1, grad_x_v1, grad_kernel_v1, ...).
VERSIONS = (1, 2, 3)
BEST_VERSION = 3


def _kernel(name: str, version: int | None):
    """``cpu_kernels.<name>_v<version>``; ``None`` means the best version."""
    version = BEST_VERSION if version is None else version
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS} or None, got {version!r}")
    return getattr(cpu_kernels, f"{name}_v{version}")


def _hyper_parameters(geometry: Geometry) -> tuple[int, int, int, int, int, int]:
    """``(sh, sw, ph, pw, dh, dw)``: the scalar arguments every kernel takes after its arrays."""
    return (*geometry.stride, *geometry.padding, *geometry.dilation)


def involution2d(x, kernel, stride=1, padding=0, dilation=1, *, version: int | None = None) -> np.ndarray:
    """Involution on the CPU with numba; same semantics, arguments and errors as the NumPy reference.

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``,
    ``g = c // (C // G)``. float32 inputs accumulate in float32 (Kh*Kw terms per output element).

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W), float32 or float64 (any strides: copied to C order once)
    kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo), dtype of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
    version : int, optional
        Numbered kernel of :mod:`involution.fast.cpu_kernels` to run (one of ``VERSIONS``); default the best.

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``
    """
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation)
    x, kernel = np.ascontiguousarray(x), np.ascontiguousarray(kernel)
    out = np.empty(geometry.out_shape, x.dtype)
    _kernel("forward", version)(x, kernel, out, *_hyper_parameters(geometry))
    return out


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1, *, version: int | None = None):
    """Gradients of :func:`involution2d` with respect to ``x`` and ``kernel`` (gather kernels, no atomics).

    Parameters
    ----------
    grad_out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``
    x, kernel, stride, padding, dilation, version : as in :func:`involution2d`

    Returns
    -------
    grad_x : ndarray, shape (B, C, H, W)
    grad_kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo)
    """
    grad_out, x, kernel, geometry = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_out, x, kernel = (np.ascontiguousarray(array) for array in (grad_out, x, kernel))
    grad_x, grad_kernel = np.empty(x.shape, x.dtype), np.empty(kernel.shape, x.dtype)
    hyper_parameters = _hyper_parameters(geometry)
    _kernel("grad_x", version)(grad_out, kernel, grad_x, *hyper_parameters)
    _kernel("grad_kernel", version)(grad_out, x, grad_kernel, *hyper_parameters)
    return grad_x, grad_kernel
