"""Fast CPU involution: the reference's validation, then a numbered numba kernel of each pass.

The kernels live one module per pass (``cpu_forward``, ``cpu_grad_x``, ``cpu_grad_kernel``, on the building blocks of
``cpu_blocks``); :data:`KERNELS` maps each public version to the kernel each pass runs, and this module holds the
version policy, :func:`choose_version` (the name and signature of ``involution.fast.cuda.choose_version``), with
every threshold it uses. :func:`versions_for` tells callers and benchmarks what it picks for a geometry, and a
``version=`` a geometry cannot take is a ValueError, never a silent substitute. Every version computes the
definition, non-finite values included (an infinite weight on a tap reading the zero padding gives NaN).

One forward lies outside the table: ``cpu_forward_channels_last`` runs on the memory of torch's ``channels_last``
tensors (``x`` as (B, H, W, C), a position-major kernel), which no version here takes; the torch op calls its
``run`` for such tensors (``involution.torch.ops.channels_last_forward``) and this module's for all others.

Two levels, like ``involution.fast.cuda``: :func:`involution2d` and :func:`involution2d_backward` validate, copy to
C order and allocate; :func:`run` takes arrays and a geometry already validated (the torch op's path) and runs one
pass into a given result.

Threads come from numba's settings (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); results are bitwise
identical from run to run and for any thread count, since every output element has one writer. The threading
layer is TBB where installed (fork- and thread-safe), see ``involution.fast.runtime`` and docs/threading.md.
"""
from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from involution.spec import Geometry, check_involution2d, check_involution2d_backward

from . import cpu_forward, cpu_grad_kernel, cpu_grad_x
from .cpu_blocks import POSITIONS, channel_lanes
from .cpu_forward import MAX_ROW_TAPS
from .runtime import call_guard, call_threads

KINDS = ("forward", "grad_x", "grad_kernel")


@dataclass(frozen=True)
class Kernel:
    """One numbered kernel of one pass: ``run(*arrays, sh, sw, ph, pw, dh, dw)`` overwrites the last array;
    ``scratch(geometry, workers)`` is the scratch it allocates, in elements (None: none)."""

    number: int
    run: Callable
    scratch: Callable[[Geometry, int], int] | None = None


class Kernels(NamedTuple):
    """The kernels one public version runs, by pass."""

    forward: Kernel
    grad_x: Kernel
    grad_kernel: Kernel


_FORWARD = {kernel.number: kernel for kernel in (
    Kernel(1, cpu_forward.forward_v1), Kernel(2, cpu_forward.forward_v2),
    Kernel(3, cpu_forward.forward_v3, cpu_forward.scratch_v3), Kernel(4, cpu_forward.forward_v4, cpu_forward.scratch_v4),
    Kernel(6, cpu_forward.forward_v6, cpu_forward.scratch_v6), Kernel(8, cpu_forward.forward_v8, cpu_forward.scratch_v8))}
_GRAD_X = {kernel.number: kernel for kernel in (
    Kernel(1, cpu_grad_x.grad_x_v1), Kernel(2, cpu_grad_x.grad_x_v2),
    Kernel(3, cpu_grad_x.grad_x_v3, cpu_grad_x.scratch_v3), Kernel(8, cpu_grad_x.grad_x_v8, cpu_grad_x.scratch_v8))}
_GRAD_KERNEL = {kernel.number: kernel for kernel in (
    Kernel(1, cpu_grad_kernel.grad_kernel_v1), Kernel(2, cpu_grad_kernel.grad_kernel_v2),
    Kernel(3, cpu_grad_kernel.grad_kernel_v3, cpu_grad_kernel.scratch_v3),
    Kernel(7, cpu_grad_kernel.grad_kernel_v7, cpu_grad_kernel.scratch_v7),
    Kernel(9, cpu_grad_kernel.grad_kernel_v9, cpu_grad_kernel.scratch_v9))}
# The kernel table: public version -> the numbered (forward, grad_x, grad_kernel) it runs. A version that changed one
# pass runs the others' previous kernels. Version 5 is retired: its forward is bitwise v6's (cpu_forward's header).
KERNELS = {version: Kernels(_FORWARD[forward], _GRAD_X[grad_x], _GRAD_KERNEL[grad_kernel])
           for version, (forward, grad_x, grad_kernel) in {
               1: (1, 1, 1), 2: (2, 2, 2), 3: (3, 3, 3), 4: (4, 3, 3), 6: (6, 3, 3), 7: (6, 3, 7), 8: (8, 8, 7),
               9: (8, 8, 9)}.items()}
VERSIONS = tuple(KERNELS)

# --- the version policy: every threshold it uses (docs/performance.md, "Version policy") ---------------------------
# Channel vectors (forward and grad_x v8, grad_kernel v7/v9) where channel_vectors_fit: at least half of a float32
# vector's lanes hold channels (5 or more channels per group) and the channels-last copy is within
# CHANNEL_COPY_RATIO of the input the taps read. grad_kernel there: v9 (output positions in vector lanes) on rows of
# NARROWEST_V9 or more outputs with kernels of FEWEST_TAPS_V9 taps or more, or smaller kernels at batch 1 (where it
# was measured faster than v7 on the RedNet-50 layers: 7x7 layers at batch 1 and 8, the 3x3 layer at batch 1); v7 on
# rows of POSITIONS or more; else v3. Elsewhere: v4 forward (kernel rows up to MAX_ROW_TAPS taps, v3 beyond), v3
# gradients, v2 grad_x on output rows narrower than NARROW_OUTPUT (v3's padded wide rows are mostly padding there);
# v3 and v4 only where their scratch fits (scratch_fits), else v2, which needs none.
NARROWEST_V9 = 7  # the narrowest output rows v9 was measured faster than v7 on (RedNet's 7x7)
FEWEST_TAPS_V9 = 10  # fewer taps: v9 at batch 1 only (RedNet's 3x3 layer at batch 8 measured no faster than v7:
# 0.90-1.59x over five runs, about 1 in three; at batch 1 1.3-1.8x)
NARROW_OUTPUT = 8
CHANNEL_COPY_RATIO = 4  # a one-row band's channels-last copy over the input values its taps read, at most
# v3 and v4 copy the input per stride phase into wide rows: their scratch (all threads) may be at most SCRATCH_RATIO
# times the elements of the op's arrays (x, kernel and the output), plus SCRATCH_SLACK per thread for the vector
# padding. Past it (huge strides or dilations, kernels far wider than the output) v2 runs.
SCRATCH_RATIO = 4
SCRATCH_SLACK = 4096


def channel_copy_fits(geometry: Geometry) -> bool:
    """Whether a one-row band's channels-last copy holds at most ``CHANNEL_COPY_RATIO`` times the input values that
    row's taps read (huge strides or dilations skip most of the padded input, which the copy would hold): the
    channel-vector kernels (forward v6, v8; grad_x v8; grad_kernel v7, v9) may run on ``geometry``."""
    (_, sw), (dh, dw) = geometry.stride, geometry.dilation
    rows_in, wide = (geometry.kernel_h - 1) * dh + 1, (geometry.out_w - 1) * sw + (geometry.kernel_w - 1) * dw + 1
    return rows_in * wide <= CHANNEL_COPY_RATIO * geometry.kernel_h * geometry.kernel_w * geometry.out_w


def channel_vectors_fit(geometry: Geometry) -> bool:
    """Whether the policy runs the channel-vector kernels on ``geometry``: their copy fits
    (:func:`channel_copy_fits`) and at least half of each float32 vector's lanes hold channels (float64 vectors
    have half as many lanes)."""
    return (2 * geometry.group_channels > channel_lanes(geometry.group_channels, np.float32)
            and channel_copy_fits(geometry))


def choose_version(name: str, geometry: Geometry) -> int:
    """The version of kernel ``name`` ("forward", "grad_x", "grad_kernel") that runs for ``geometry``.

    The fastest one measured (docs/performance.md): the channel-vector kernels where :func:`channel_vectors_fit`
    (v8 forward and grad_x; grad_kernel v9 on rows of at least ``NARROWEST_V9`` outputs with ``FEWEST_TAPS_V9`` taps
    or more, or fewer at batch 1, else v7 on rows of at least ``cpu_blocks.POSITIONS``); else v4 forward (kernel rows
    up to ``MAX_ROW_TAPS`` taps, v3 beyond), v3 gradients and v2 grad_x on outputs narrower than ``NARROW_OUTPUT``,
    among those whose scratch fits (:func:`scratch_fits`), else v2, which needs none.
    """
    _check_kind(name)
    channel_vectors = channel_vectors_fit(geometry)
    if name == "forward":
        if channel_vectors:
            return 8
        preferred = 4 if geometry.kernel_w <= MAX_ROW_TAPS else 3
    elif name == "grad_kernel" and channel_vectors and geometry.out_w >= POSITIONS:
        taps = geometry.kernel_h * geometry.kernel_w
        return 9 if geometry.out_w >= NARROWEST_V9 and (taps >= FEWEST_TAPS_V9 or geometry.batch == 1) else 7
    elif name == "grad_x" and channel_vectors:
        return 8
    else:
        preferred = 2 if name == "grad_x" and geometry.out_w < NARROW_OUTPUT else 3
    return preferred if preferred < 3 or scratch_fits(name, preferred, geometry) else 2


def versions_for(geometry: Geometry) -> dict[str, int]:
    """``{"forward": v, "grad_x": v, "grad_kernel": v}``: the versions :func:`involution2d` and
    :func:`involution2d_backward` run for ``geometry`` with ``version=None``."""
    return {name: choose_version(name, geometry) for name in KINDS}


def kernel_of(name: str, version: int) -> Kernel:
    """The :class:`Kernel` that pass ``name`` runs in public ``version`` (a checked int of ``VERSIONS``)."""
    _check_kind(name)
    return getattr(KERNELS[_check_version_number(version)], name)


def scratch_elements(name: str, version: int, geometry: Geometry, workers: int | None = None) -> int:
    """Elements of scratch memory pass ``name`` of ``version`` allocates for ``geometry`` on ``workers`` threads
    (default: numba's current count), from the kernel's own scratch function, in exact Python ints (for float32
    where the dtype matters: its vectors hold the most channels)."""
    kernel = kernel_of(name, version)
    workers = numba.get_num_threads() if workers is None else workers
    return 0 if kernel.scratch is None else kernel.scratch(geometry, workers)


def scratch_fits(name: str, version: int, geometry: Geometry) -> bool:
    """True when ``<name>`` of ``version``'s scratch is within ``SCRATCH_RATIO`` times the op's array elements
    (plus ``SCRATCH_SLACK`` per thread) on numba's current thread count."""
    return _scratch_fits(name, version, geometry, numba.get_num_threads())


@functools.lru_cache(maxsize=4096)  # a network calls the op on a few geometries, many times
def _scratch_fits(name: str, version: int, geometry: Geometry, workers: int) -> bool:
    arrays = sum(math.prod(shape) for shape in (geometry.x_shape, geometry.kernel_shape, geometry.out_shape))
    return scratch_elements(name, version, geometry, workers) <= SCRATCH_RATIO * arrays + SCRATCH_SLACK * workers


def introduced(name: str, version: int) -> int:
    """The version whose code pass ``name`` of ``version`` runs: a version that changes only some passes runs the
    others' previous kernels (``grad_x`` of version 4 is v3's), so its limits are theirs."""
    return kernel_of(name, version).number


def check_version(name: str, version: int | None, geometry: Geometry) -> int:
    """``version`` if kernel ``name`` can run it on ``geometry``, :func:`choose_version` for None.

    Raises TypeError for a ``version`` that is not an int, ValueError for one outside ``VERSIONS`` or one that
    cannot run ``geometry``.
    """
    if version is None:
        return choose_version(name, geometry)
    version = _check_version_number(version)
    code = introduced(name, version)
    advice = f"use version=None (picks {choose_version(name, geometry)})"
    if name == "forward" and code == 4 and geometry.kernel_w > MAX_ROW_TAPS:
        raise ValueError(f"version {version} unrolls kernel rows of up to {MAX_ROW_TAPS} taps, got Kw="
                         f"{geometry.kernel_w}; {advice} or 1-3")
    if code in (3, 4) and not scratch_fits(name, version, geometry):
        raise ValueError(f"version {version} of {name} would need {scratch_elements(name, version, geometry)} scratch "
                         f"elements for stride {geometry.stride}, dilation {geometry.dilation} and output "
                         f"{geometry.out_h}x{geometry.out_w}, more than {SCRATCH_RATIO}x the arrays; {advice} or 1-2")
    if code >= 5 and not channel_copy_fits(geometry):
        raise ValueError(f"version {version} of {name} (channel vectors) would copy far more of the padded input than "
                         f"its taps read (stride {geometry.stride}, dilation {geometry.dilation}, kernel "
                         f"{geometry.kernel_h}x{geometry.kernel_w}, output width {geometry.out_w}); {advice}")
    return version


def _check_version_number(version) -> int:
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise TypeError(f"version must be an int, one of {VERSIONS}, or None, got {type(version).__name__} "
                        f"{version!r}")
    if version not in KERNELS:
        raise ValueError(f"version must be one of {VERSIONS} or None, got {version!r}")
    return int(version)


def _check_kind(name: str) -> None:
    if name not in KINDS:
        raise ValueError(f"kernel name must be one of {KINDS}, got {name!r}")


def pass_shapes(name: str, geometry: Geometry) -> tuple[tuple, tuple, tuple]:
    """The shapes of pass ``name``'s arrays for :func:`run`: its two inputs, then its result (``forward``: x, kernel,
    out; ``grad_x``: grad_out, kernel, grad_x; ``grad_kernel``: grad_out, x, grad_kernel)."""
    g = geometry
    return {"forward": (g.x_shape, g.kernel_shape, g.out_shape), "grad_x": (g.out_shape, g.kernel_shape, g.x_shape),
            "grad_kernel": (g.out_shape, g.x_shape, g.kernel_shape)}[name]


def run(name: str, arrays, geometry: Geometry, version: int | None = None) -> int:
    """Run pass ``name`` on arrays already checked against ``geometry``; overwrite the result; return the version.

    The validated level under :func:`involution2d` and :func:`involution2d_backward` (the twin of
    ``involution.fast.cuda_kernels.forward`` and its siblings), for callers that validated the inputs themselves,
    such as the torch op: no copies, no allocation.

    Parameters
    ----------
    name : {"forward", "grad_x", "grad_kernel"}
    arrays : tuple of three C-contiguous ndarrays of one dtype, float32 or float64
        forward: ``(x (B, C, H, W), kernel (B, G, Kh, Kw, Ho, Wo), out (B, C, Ho, Wo))``;
        grad_x: ``(grad_out, kernel, grad_x (B, C, H, W))``; grad_kernel: ``(grad_out, x, grad_kernel)``.
        The last is the result, overwritten completely (all zeros where the inputs are empty: a sum of no terms).
    geometry : Geometry
        From ``involution.spec.check_geometry`` (or the checks that return one).
    version : int, optional
        One of ``VERSIONS``; default :func:`choose_version`.

    Returns
    -------
    int : the version that ran (:func:`check_version`).

    Raises
    ------
    TypeError, ValueError
        An unknown ``name``; ``arrays`` whose shapes, dtype or layout do not match ``geometry``; a ``version`` that
        cannot run it (:func:`check_version`).
    """
    _check_kind(name)
    version = check_version(name, version, geometry)
    if len(arrays) != 3:
        raise ValueError(f"arrays must be three ndarrays for {name} (two inputs, then the result), got {len(arrays)}")
    dtype = arrays[-1].dtype
    for index, (array, shape) in enumerate(zip(arrays, pass_shapes(name, geometry))):
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype or \
                dtype not in (np.float32, np.float64) or not array.flags.c_contiguous:
            raise ValueError(f"arrays[{index}] of {name} must be a C-contiguous float32 or float64 ndarray of shape "
                             f"{shape} and the result's dtype ({dtype}), got "
                             f"{type(array).__name__} {getattr(array, 'shape', '')} {getattr(array, 'dtype', '')}")
    inputs, result = arrays[:2], arrays[2]
    if result.size == 0:
        return version
    if any(array.size == 0 for array in inputs):  # no channels: every element is a sum of no terms
        result.fill(0)
        return version
    with call_guard(), call_threads():
        kernel_of(name, version).run(*arrays, *geometry.stride, *geometry.padding, *geometry.dilation)
    return version


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
        Public version of the kernel table :data:`KERNELS` (one of ``VERSIONS``); default :func:`choose_version`
        (:func:`versions_for` says which).

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), dtype of ``x``

    Raises
    ------
    TypeError, ValueError
        Bad arrays or hyper-parameters (the reference's messages); a ``version`` that is not an int, or cannot run
        this geometry (:func:`check_version`).
    """
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation)
    x, kernel = np.ascontiguousarray(x), np.ascontiguousarray(kernel)
    out = np.empty(geometry.out_shape, x.dtype)
    run("forward", (x, kernel, out), geometry, version)
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

    Raises
    ------
    TypeError, ValueError
        As :func:`involution2d`, and a ``grad_out`` of another shape or dtype than the output.
    """
    grad_out, x, kernel, geometry = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_out, x, kernel = (np.ascontiguousarray(array) for array in (grad_out, x, kernel))
    grad_x, grad_kernel = np.empty(x.shape, x.dtype), np.empty(kernel.shape, x.dtype)
    run("grad_x", (grad_out, kernel, grad_x), geometry, version)
    run("grad_kernel", (grad_out, x, grad_kernel), geometry, version)
    return grad_x, grad_kernel
