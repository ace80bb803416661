"""Fast CPU involution: the reference's validation, then the best numbered numba kernel of ``cpu_kernels``.

Threads come from numba's settings (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); results are bitwise
identical from run to run and for any thread count, since every output element has one writer.
"""
from __future__ import annotations

import numba
import numpy as np

from involution.spec import Geometry, check_involution2d, check_involution2d_backward

from . import cpu_kernels

# Numbered versions of each kernel in cpu_kernels (forward_v1, grad_x_v1, grad_kernel_v1, ...).
VERSIONS = (1, 2, 3, 4, 5, 6, 7)
# v6 (channel vectors) for the forward where cpu_kernels.fits_v5, else v4 (kernel rows in registers); v7 (channel
# vectors) for grad_kernel there too on rows of 4 or more outputs, else v3 (wide rows); v3 for grad_x but on output
# rows narrower than 8, where v3's padded wide rows are mostly padding and v2 (row-wise) wins (see
# docs/performance.md, --kernel-versions). v4's to v6's gradients are v3's; v7's forward is v6's.
NARROW_OUTPUT = 8


def best_version(name: str, geometry: Geometry) -> int:
    """The fastest numbered version of kernel ``name`` ("forward", "grad_x", "grad_kernel") for ``geometry``."""
    if name == "forward":
        return 6 if cpu_kernels.fits_v5(geometry) else 4
    if name == "grad_kernel":
        return 7 if cpu_kernels.fits_v5(geometry) and geometry.out_w >= cpu_kernels.POSITIONS else 3
    return 2 if geometry.out_w < NARROW_OUTPUT else 3


def _run(name: str, version: int | None, geometry: Geometry, *arrays) -> None:
    """Run ``cpu_kernels.<name>_v<version>`` (``None``: the best) on validated C-contiguous ``arrays``."""
    version = best_version(name, geometry) if version is None else version
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS} or None, got {version!r}")
    workers = (numba.get_num_threads(),) if version >= 3 else ()  # v3 and v4 keep one scratch set per thread
    getattr(cpu_kernels, f"{name}_v{version}")(*arrays, *_hyper_parameters(geometry), *workers)


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
        Numbered kernel of :mod:`involution.fast.cpu_kernels` to run (one of ``VERSIONS``); default
        :func:`best_version`.

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``
    """
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation)
    x, kernel = np.ascontiguousarray(x), np.ascontiguousarray(kernel)
    out = np.empty(geometry.out_shape, x.dtype)
    _run("forward", version, geometry, x, kernel, out)
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
    _run("grad_x", version, geometry, grad_out, kernel, grad_x)
    _run("grad_kernel", version, geometry, grad_out, x, grad_kernel)
    return grad_x, grad_kernel
