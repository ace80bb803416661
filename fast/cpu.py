"""Fast CPU involution: the reference's validation, then a numbered numba kernel of ``cpu_kernels``.

Which version runs is one policy, :func:`choose_version` (the name and signature of
``involution.fast.cuda.choose_version``); :func:`versions_for` tells callers and benchmarks what it picks for
a geometry, and a ``version=`` a geometry cannot take is a ValueError, never a silent substitute. Every
version computes the definition, non-finite values included (an infinite weight on a tap reading the zero
padding gives NaN), and all take the same arguments.

Threads come from numba's settings (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); results are bitwise
identical from run to run and for any thread count, since every output element has one writer. The threading
layer is TBB where installed (fork- and thread-safe), see ``involution.fast.runtime`` and docs/threading.md.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np

from involution.spec import Geometry, check_involution2d, check_involution2d_backward

from . import cpu_kernels
from .runtime import call_guard, call_threads

KINDS = ("forward", "grad_x", "grad_kernel")
# Numbered versions of each kernel in cpu_kernels (forward_v1, grad_x_v1, grad_kernel_v1, ...).
VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
# v8 (the second channel-vector generation) for the forward and grad_x where cpu_kernels.fits_v5: forward with eight
# positions per block, grad_x with channel vectors; else v4 forward (kernel rows in registers) and v3 grad_x, but v2
# (row-wise) on output rows narrower than 8, where v3's padded wide rows are mostly padding. For grad_kernel where
# fits_v5: v9 (output positions in vector lanes) on rows of cpu_kernels.NARROWEST_V9 (7) or more outputs, with kernels
# of at least cpu_kernels.FEWEST_TAPS_V9 taps, or smaller ones at batch 1: where it was measured faster than v7 on the
# RedNet-50 layers (16 channels per group; 7x7 layers at batch 1 and 8, the 3x3 layer at batch 1; docs/performance.md,
# "v9 against v7"); v7 (channel vectors) elsewhere on rows of 4 or more; else v3 (wide rows) (see docs/performance.md,
# --kernel-versions). v4's to v6's gradients are v3's; v7's forward is v6's; v8's kernel gradient is v7's; v9's forward
# and input gradient are v8's.
NARROW_OUTPUT = 8
# v3 and v4 copy the input per stride phase into wide rows: their scratch (all threads) may be at most this
# many times the elements of the op's arrays (x, kernel and the output), plus SCRATCH_SLACK per thread for
# the vector padding. Past it (huge strides or dilations, kernels far wider than the output) v2 runs, which
# needs no scratch.
SCRATCH_RATIO = 4
SCRATCH_SLACK = 4096


def choose_version(name: str, geometry: Geometry) -> int:
    """The version of kernel ``name`` ("forward", "grad_x", "grad_kernel") that runs for ``geometry``.

    The fastest one measured (docs/performance.md): the channel-vector kernels (v8 forward and grad_x; grad_kernel
    v9 on rows of at least ``cpu_kernels.NARROWEST_V9`` outputs with ``cpu_kernels.FEWEST_TAPS_V9`` taps or more, or
    fewer at batch 1, else v7 on rows of at least ``cpu_kernels.POSITIONS``) where ``cpu_kernels.fits_v5``; else v4
    forward (kernel rows up to
    ``cpu_kernels.MAX_ROW_TAPS`` taps, v3 beyond), v3 gradients and v2 grad_x on narrow outputs, among those whose
    scratch fits (:func:`scratch_elements`), else v2, which needs none.
    """
    _check_kind(name)
    if name == "forward":
        if cpu_kernels.fits_v5(geometry):
            return 8
        preferred = 4 if geometry.kernel_w <= cpu_kernels.MAX_ROW_TAPS else 3
    elif name == "grad_kernel" and cpu_kernels.fits_v5(geometry) and geometry.out_w >= cpu_kernels.POSITIONS:
        taps = geometry.kernel_h * geometry.kernel_w
        return 9 if geometry.out_w >= cpu_kernels.NARROWEST_V9 and (
            taps >= cpu_kernels.FEWEST_TAPS_V9 or geometry.batch == 1) else 7
    elif name == "grad_x" and cpu_kernels.fits_v5(geometry):
        return 8
    else:
        preferred = 2 if name == "grad_x" and geometry.out_w < NARROW_OUTPUT else 3
    return preferred if preferred < 3 or scratch_fits(name, preferred, geometry) else 2


def versions_for(geometry: Geometry) -> dict[str, int]:
    """``{"forward": v, "grad_x": v, "grad_kernel": v}``: the versions :func:`involution2d` and
    :func:`involution2d_backward` run for ``geometry`` with ``version=None``."""
    return {name: choose_version(name, geometry) for name in KINDS}


def scratch_elements(name: str, version: int, geometry: Geometry, workers: int | None = None) -> int:
    """Elements of scratch memory ``<name>_v<version>`` allocates for ``geometry`` on ``workers`` threads
    (default: numba's current count), from the kernels' own layout functions, in exact Python ints (grad_x_v8's for
    float32, whose vectors hold at least as many channels as float64's)."""
    _check_kind(name)
    if version < 3:
        return 0
    g = geometry
    workers = numba.get_num_threads() if workers is None else workers
    if name == "grad_x" and introduced(name, version) == 8:  # one slot per thread
        lanes = cpu_kernels.lanes_v5(g.group_channels, np.float32)
        return workers * cpu_kernels.band_v8(g.batch, g.groups, g.group_channels, lanes, g.height, g.width, g.out_h,
                                             g.out_w, g.kernel_h, g.stride[0], g.dilation[0], workers)[1]
    if name == "grad_kernel" and version == 9:  # one slot per thread
        return workers * cpu_kernels.plan_v9(g.batch, g.groups, g.group_channels, g.out_h, g.out_w, g.kernel_h,
                                             g.kernel_w, *g.stride, *g.dilation, np.float32, workers)[2]
    (sh, sw), (ph, _), (dh, dw) = g.stride, g.padding, g.dilation
    if name == "forward":
        block = cpu_kernels.CHANNEL_BLOCK if version == 4 else 1
        lengths = cpu_kernels.forward_scratch.py_func(block, g.group_channels, g.out_h, g.out_w, g.kernel_h,
                                                      g.kernel_w, sh, sw, dh, dw)
        reach_h, wide, band = cpu_kernels.wide_layout.py_func(g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, dh, dw)
        rows = g.out_h
    elif name == "grad_kernel":
        lengths = cpu_kernels.grad_kernel_scratch.py_func(g.group_channels, g.out_h, g.out_w, g.kernel_h, g.kernel_w,
                                                          sh, sw, dh, dw)
        reach_h, wide, band = cpu_kernels.wide_layout.py_func(g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, dh, dw)
        rows = g.out_h
    else:
        lengths = cpu_kernels.grad_x_scratch.py_func(g.group_channels, g.height, g.out_h, g.out_w, g.kernel_h,
                                                     g.kernel_w, sh, sw, ph, dh, dw)
        _, _, band, rows = cpu_kernels.grad_x_layout.py_func(g.height, g.out_h, g.out_w, g.kernel_h, g.kernel_w,
                                                             sh, sw, ph, dh, dw)
    units = g.batch * g.groups * -(-rows // band)
    return min(workers, units) * sum(lengths)


def scratch_fits(name: str, version: int, geometry: Geometry) -> bool:
    """True when ``<name>_v<version>``'s scratch is within ``SCRATCH_RATIO`` times the op's array elements
    (plus ``SCRATCH_SLACK`` per thread) on numba's current thread count."""
    return _scratch_fits(name, version, geometry, numba.get_num_threads())


@functools.lru_cache(maxsize=4096)  # a network calls the op on a few geometries, many times
def _scratch_fits(name: str, version: int, geometry: Geometry, workers: int) -> bool:
    arrays = sum(math.prod(shape) for shape in (geometry.x_shape, geometry.kernel_shape, geometry.out_shape))
    return scratch_elements(name, version, geometry, workers) <= SCRATCH_RATIO * arrays + SCRATCH_SLACK * workers


def introduced(name: str, version: int) -> int:
    """The version whose code ``<name>_v<version>`` runs: a version that changes only some kernels reuses the
    others (``grad_x_v4`` is ``grad_x_v3``), so its limits are theirs."""
    kernel = getattr(cpu_kernels, f"{name}_v{version}")
    return min(number for number in VERSIONS if getattr(cpu_kernels, f"{name}_v{number}") is kernel)


def check_version(name: str, version: int | None, geometry: Geometry) -> int:
    """``version`` if kernel ``name`` can run it on ``geometry``, :func:`choose_version` for None; else ValueError."""
    if version is None:
        return choose_version(name, geometry)
    if isinstance(version, bool) or version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS} or None, got {version!r}")
    code = introduced(name, version)
    advice = f"use version=None (picks {choose_version(name, geometry)})"
    if name == "forward" and code == 4 and geometry.kernel_w > cpu_kernels.MAX_ROW_TAPS:
        raise ValueError(f"version {version} unrolls kernel rows of up to {cpu_kernels.MAX_ROW_TAPS} taps, got Kw="
                         f"{geometry.kernel_w}; {advice} or 1-3")
    if code in (3, 4) and not scratch_fits(name, code, geometry):
        raise ValueError(f"version {version} of {name} would need {scratch_elements(name, code, geometry)} scratch "
                         f"elements for stride {geometry.stride}, dilation {geometry.dilation} and output "
                         f"{geometry.out_h}x{geometry.out_w}, more than {SCRATCH_RATIO}x the arrays; {advice} or 1-2")
    if code >= 5 and not cpu_kernels.scratch_fits_v5(geometry):
        raise ValueError(f"version {version} of {name} (channel vectors) would copy far more of the padded input than "
                         f"its taps read (stride {geometry.stride}, dilation {geometry.dilation}, kernel "
                         f"{geometry.kernel_h}x{geometry.kernel_w}, output width {geometry.out_w}); {advice}")
    return version


def _check_kind(name: str) -> None:
    if name not in KINDS:
        raise ValueError(f"kernel name must be one of {KINDS}, got {name!r}")


def _run(name: str, version: int | None, geometry: Geometry, *arrays) -> int:
    """Run ``cpu_kernels.<name>_v<version>`` (``None``: the policy's) on validated C-contiguous ``arrays``;
    return the version that ran."""
    version = check_version(name, version, geometry)
    with call_guard(), call_threads():
        getattr(cpu_kernels, f"{name}_v{version}")(*arrays, *_hyper_parameters(geometry))
    return version


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
        :func:`choose_version` (:func:`versions_for` says which).

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``

    Raises
    ------
    TypeError, ValueError
        Bad arrays or hyper-parameters (the reference's messages); a ``version`` that cannot run this
        geometry (:func:`check_version`).
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
