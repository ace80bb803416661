"""The involution layer's last two steps in one pass: the span convolution generating the kernel, then the op.

An involution layer generates its kernel with a 1x1 convolution, the *span* ``W0`` of the paper's kernel
generation (Li et al., CVPR 2021, eq. 6: ``W0 (C/r -> K*K*G)`` after the reduction ``W1 (C -> C/r)``), and the op
reads that kernel back once. Written whole, the kernel is ``G*Kh*Kw`` values per output position, three times the
input at RedNet's K = 7 and 16 channels per group, and the span convolution has only ``C/r`` multiply-adds per value
it writes, so both steps spend their time moving it. Here each block of output positions generates its kernel into a
small buffer, uses it and drops it::

    kernel[b, i, j, g, u, v] = bias[g*Kh*Kw + u*Kw + v] + sum_r weight[g*Kh*Kw + u*Kw + v, r] * hidden[b, i, j, r]
    out[b, i, j, c] = sum_{u, v} kernel[b, i, j, g, u, v] * x_pad[b, i*sh + u*dh, j*sw + v*dw, c],  g = c // (C / G)

on channels-last arrays (the memory of torch's ``channels_last`` tensors): ``x (B, H, W, C)``, ``hidden (B, Ho, Wo,
R)`` (the reduction's output, or the pooled input for a linear kernel generation), ``weight (G*Kh*Kw, R)``, ``bias
(G*Kh*Kw,)``, ``out (B, Ho, Wo, C)``. The kernel's channel order is ``conv2``'s output viewed as ``(B, G, Kh, Kw, Ho,
Wo)``, the official layer's.

Kernel versions (a new one replaces the last; each measured against the span convolution through torch followed by
``cpu_forward_channels_last``, float32, ``channels_last`` torch tensors, on RedNet-50's involution layers: ``python -m
involution.benchmarks.span``):

1. Blocks of ``2 * lanes`` consecutive output positions (consecutive across rows and images in this layout, so short
   rows still fill whole vectors), a few blocks per ``prange`` unit (each unit allocates its buffers once). The span
   convolution vectorises over the block's positions: the block's ``hidden`` rows transposed into an ``(R, 2 *
   lanes)`` buffer, four kernel taps at a time for both vectors of positions (eight independent multiply-add chains
   sharing each weight), into a ``(Kh*Kw, 2 * lanes)`` buffer per group. The op then sums each position's group
   channels, vectorised over channels, two positions at a time with four partial sums each (tap ``t`` into sum ``t %
   4``) where both windows lie inside the input (tap offsets precomputed); at the borders, and for a group's last,
   partial channel vector, every tap is checked and a tap reading the zero padding multiplies its weight by 0, so
   an infinite weight there gives NaN, as in the op.
2. The same blocks and loops, the units now taken by each worker from a shared atomic counter (buffers allocated once
   per worker), so that the pass runs either on numba's threads (:func:`forward_span`, a ``prange`` over workers)
   or as a ``cfunc`` on the threads of torch's GNU OpenMP runtime (:func:`openmp_worker`, ``involution.fast.openmp``),
   which are the threads the kernel generation's convolution just ran on; where there are fewer blocks than units
   wanted (7x7 images at batch 1), each block's groups are split into units (:func:`work_split`). On two threads,
   over RedNet-50's layers weighted by count: 4.9 ms on torch's threads against 6.7 ms on numba's at batch 1, 26.3
   against 38.9 ms at batch 8 (``python -m involution.benchmarks.span --threads 2 --batch 1 8 --repeats 13``; an
   earlier run on a slower VM: 8.2 / 12.1 and 43.3 / 59.7 ms). One thread, against version 1 in one process, over the
   7x7 stride-1 layers: the same time (33.4 against 34.5 ms at batch 8, 4.32 against 4.41 ms at batch 1).

The single-position inside path repeats the two-position one on purpose: merged into it (the second position the
first again), or both written as inline helpers, the layers ran 15-50% slower. Tried and dropped: eight taps at a
time in the span convolution (more chains, 10-25% slower than four); copying each group's input under a block into a
contiguous zero-padded region first, so the op runs without checks and its loads do not fall on the few cache sets a
``channels_last`` pixel stride of 256-2048 bytes maps a group to (about 15% slower over RedNet-50's layers at batch 8
and 1: the copy costs more than it saves).

Results differ from the two-step path by rounding only: the partial sums change the order of the op's sum, and the
span convolution here sums ``r`` in order where oneDNN blocks it. Bitwise the same for any thread count (every
output element has one writer). Forward only: the layer takes this path for inference (no gradient wanted).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange, types

from involution.spec import Geometry

from . import simd
from .cpu_blocks import UNITS_PER_THREAD, channel_lanes, inline, jit, jit_unit
from .openmp import fetch_add, pointer
from .runtime import CACHE, call_guard, call_threads

ALIGNMENT = 64  # bytes: a cache line
SPAN_TAPS = 4  # kernel taps generated together: four independent multiply-add chains per hidden channel


@inline
def aligned(size, dtype):
    """An uninitialised 1-D array of ``size`` elements starting on a 64-byte boundary (a cache line: whole-vector
    loads from it never straddle two lines)."""
    raw = np.empty(size + ALIGNMENT, dtype)
    skip = (-raw.ctypes.data % ALIGNMENT) // raw.itemsize
    return raw[skip:skip + size]


@jit_unit
def span_units(x, hidden, weight, bias, out, kernel_h, kernel_w, sh, sw, ph, pw, dh, dw, per_unit, group_chunks,
               lanes, counter):
    """One worker's share of the pass: ``x (B, H, W, C)``, ``hidden (B, Ho, Wo, R)``, ``weight (G*Kh*Kw, R)``,
    ``bias (G*Kh*Kw,)`` into ``out (B, Ho, Wo, C)``, all C-contiguous; blocks of ``2 * lanes`` positions, ``per_unit``
    of them per unit and each block's groups in ``group_chunks`` units (:func:`work_split`), the units taken from
    ``counter`` (``fetch_add``, int64 ``(1,)`` starting at 0) until none is left. Every worker of one pass shares
    ``counter``."""
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    reduced = hidden.shape[3]
    taps = kernel_h * kernel_w
    groups = weight.shape[0] // taps
    group_channels = channels // groups
    n1 = simd.count(lanes)
    n = 2 * n1
    positions = batch * out_h * out_w
    x_flat, hidden_flat, out_flat = x.reshape(-1), hidden.reshape(-1), out.reshape(-1)
    weight_flat = weight.reshape(-1)
    one = np.ones(1, x.dtype)
    offsets = np.empty(taps, np.int64)  # a tap's distance from the window's corner in x_flat
    for u in range(kernel_h):
        for v in range(kernel_w):
            offsets[u * kernel_w + v] = (u * dh * width + v * dw) * channels
    blocks = (positions + n - 1) // n
    units = (blocks + per_unit - 1) // per_unit * group_chunks
    transposed = aligned(reduced * n, x.dtype)  # a block's hidden rows transposed
    inside = np.empty(n, np.bool_)  # the whole window of position p0 + q lies inside x
    corner = np.empty(n, np.int64)  # x_flat index of the window's first tap (its top-left corner)
    rows_b, rows_i, cols_j = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    kernel = np.empty(taps * n, x.dtype)  # one group's kernel at the block's positions, tap-major
    unit = fetch_add(counter, 1)
    while unit < units:
        first_block = unit // group_chunks * per_unit
        chunk = unit % group_chunks
        for block in range(first_block, min(blocks, first_block + per_unit)):
            p0 = block * n
            count = min(n, positions - p0)
            if count < n:  # the lanes past the last position: finite, never used
                transposed[:] = 0
            for q in range(count):
                for r in range(reduced):
                    transposed[r * n + q] = hidden_flat[(p0 + q) * reduced + r]
            b, i, j = p0 // (out_h * out_w), (p0 // out_w) % out_h, p0 % out_w
            for q in range(count):
                row, col = i * sh - ph, j * sw - pw
                inside[q] = (row >= 0 and row + (kernel_h - 1) * dh < height and
                             col >= 0 and col + (kernel_w - 1) * dw < width)
                corner[q] = ((b * height + row) * width + col) * channels
                rows_b[q], rows_i[q], cols_j[q] = b, i, j
                j += 1
                if j == out_w:
                    j, i = 0, i + 1
                    if i == out_h:
                        i, b = 0, b + 1
            g_first, g_last = chunk * groups // group_chunks, (chunk + 1) * groups // group_chunks
            for g in range(groups):  # all groups, skipping the other chunks': a loop from g_first ran 5-10% slower
                if g < g_first or g >= g_last:
                    continue
                t = 0
                while t + SPAN_TAPS <= taps:
                    row0 = (g * taps + t) * reduced
                    a0 = simd.splat(bias[g * taps + t], lanes)
                    a1 = simd.splat(bias[g * taps + t + 1], lanes)
                    a2 = simd.splat(bias[g * taps + t + 2], lanes)
                    a3 = simd.splat(bias[g * taps + t + 3], lanes)
                    b0, b1, b2, b3 = a0, a1, a2, a3
                    for r in range(reduced):
                        values = simd.load(transposed, r * n, lanes)
                        more = simd.load(transposed, r * n + n1, lanes)
                        w0 = simd.splat(weight_flat[row0 + r], lanes)
                        w1 = simd.splat(weight_flat[row0 + reduced + r], lanes)
                        w2 = simd.splat(weight_flat[row0 + 2 * reduced + r], lanes)
                        w3 = simd.splat(weight_flat[row0 + 3 * reduced + r], lanes)
                        a0 = simd.multiply_add(w0, values, a0)
                        a1 = simd.multiply_add(w1, values, a1)
                        a2 = simd.multiply_add(w2, values, a2)
                        a3 = simd.multiply_add(w3, values, a3)
                        b0 = simd.multiply_add(w0, more, b0)
                        b1 = simd.multiply_add(w1, more, b1)
                        b2 = simd.multiply_add(w2, more, b2)
                        b3 = simd.multiply_add(w3, more, b3)
                    simd.store(kernel, t * n, a0)
                    simd.store(kernel, (t + 1) * n, a1)
                    simd.store(kernel, (t + 2) * n, a2)
                    simd.store(kernel, (t + 3) * n, a3)
                    simd.store(kernel, t * n + n1, b0)
                    simd.store(kernel, (t + 1) * n + n1, b1)
                    simd.store(kernel, (t + 2) * n + n1, b2)
                    simd.store(kernel, (t + 3) * n + n1, b3)
                    t += SPAN_TAPS
                while t < taps:  # the last taps, one at a time
                    row0 = (g * taps + t) * reduced
                    a0 = simd.splat(bias[g * taps + t], lanes)
                    b0 = a0
                    for r in range(reduced):
                        w0 = simd.splat(weight_flat[row0 + r], lanes)
                        a0 = simd.multiply_add(w0, simd.load(transposed, r * n, lanes), a0)
                        b0 = simd.multiply_add(w0, simd.load(transposed, r * n + n1, lanes), b0)
                    simd.store(kernel, t * n, a0)
                    simd.store(kernel, t * n + n1, b0)
                    t += 1
                q = 0
                while q < count:
                    p = p0 + q
                    paired = q + 1 < count and inside[q] and inside[q + 1] and group_channels % n1 == 0
                    for c0 in range(g * group_channels, (g + 1) * group_channels, n1):
                        valid = min(n1, (g + 1) * group_channels - c0)
                        if paired:
                            start = corner[q] + c0
                            start1 = corner[q + 1] + c0
                            s0 = simd.zeros(x_flat, lanes)
                            s1 = simd.zeros(x_flat, lanes)
                            s2 = simd.zeros(x_flat, lanes)
                            s3 = simd.zeros(x_flat, lanes)
                            e0 = simd.zeros(x_flat, lanes)
                            e1 = simd.zeros(x_flat, lanes)
                            e2 = simd.zeros(x_flat, lanes)
                            e3 = simd.zeros(x_flat, lanes)
                            t = 0
                            while t + 4 <= taps:
                                s0 = simd.multiply_add(simd.splat(kernel[t * n + q], lanes),
                                                       simd.load(x_flat, start + offsets[t], lanes), s0)
                                e0 = simd.multiply_add(simd.splat(kernel[t * n + q + 1], lanes),
                                                       simd.load(x_flat, start1 + offsets[t], lanes), e0)
                                s1 = simd.multiply_add(simd.splat(kernel[(t + 1) * n + q], lanes),
                                                       simd.load(x_flat, start + offsets[t + 1], lanes), s1)
                                e1 = simd.multiply_add(simd.splat(kernel[(t + 1) * n + q + 1], lanes),
                                                       simd.load(x_flat, start1 + offsets[t + 1], lanes), e1)
                                s2 = simd.multiply_add(simd.splat(kernel[(t + 2) * n + q], lanes),
                                                       simd.load(x_flat, start + offsets[t + 2], lanes), s2)
                                e2 = simd.multiply_add(simd.splat(kernel[(t + 2) * n + q + 1], lanes),
                                                       simd.load(x_flat, start1 + offsets[t + 2], lanes), e2)
                                s3 = simd.multiply_add(simd.splat(kernel[(t + 3) * n + q], lanes),
                                                       simd.load(x_flat, start + offsets[t + 3], lanes), s3)
                                e3 = simd.multiply_add(simd.splat(kernel[(t + 3) * n + q + 1], lanes),
                                                       simd.load(x_flat, start1 + offsets[t + 3], lanes), e3)
                                t += 4
                            while t < taps:
                                s0 = simd.multiply_add(simd.splat(kernel[t * n + q], lanes),
                                                       simd.load(x_flat, start + offsets[t], lanes), s0)
                                e0 = simd.multiply_add(simd.splat(kernel[t * n + q + 1], lanes),
                                                       simd.load(x_flat, start1 + offsets[t], lanes), e0)
                                t += 1
                            ones = simd.splat(one[0], lanes)
                            total = simd.multiply_add(ones, simd.multiply_add(ones, s0, s1),
                                                      simd.multiply_add(ones, s2, s3))
                            simd.store(out_flat, p * channels + c0, total)
                            total = simd.multiply_add(ones, simd.multiply_add(ones, e0, e1),
                                                      simd.multiply_add(ones, e2, e3))
                            simd.store(out_flat, (p + 1) * channels + c0, total)
                        else:
                            if inside[q] and valid == n1:
                                start = corner[q] + c0
                                s0 = simd.zeros(x_flat, lanes)
                                s1 = simd.zeros(x_flat, lanes)
                                s2 = simd.zeros(x_flat, lanes)
                                s3 = simd.zeros(x_flat, lanes)
                                t = 0
                                while t + 4 <= taps:
                                    s0 = simd.multiply_add(simd.splat(kernel[t * n + q], lanes),
                                                           simd.load(x_flat, start + offsets[t], lanes), s0)
                                    s1 = simd.multiply_add(simd.splat(kernel[(t + 1) * n + q], lanes),
                                                           simd.load(x_flat, start + offsets[t + 1], lanes), s1)
                                    s2 = simd.multiply_add(simd.splat(kernel[(t + 2) * n + q], lanes),
                                                           simd.load(x_flat, start + offsets[t + 2], lanes), s2)
                                    s3 = simd.multiply_add(simd.splat(kernel[(t + 3) * n + q], lanes),
                                                           simd.load(x_flat, start + offsets[t + 3], lanes), s3)
                                    t += 4
                                while t < taps:
                                    s0 = simd.multiply_add(simd.splat(kernel[t * n + q], lanes),
                                                           simd.load(x_flat, start + offsets[t], lanes), s0)
                                    t += 1
                                ones = simd.splat(one[0], lanes)
                                total = simd.multiply_add(ones, simd.multiply_add(ones, s0, s1),
                                                          simd.multiply_add(ones, s2, s3))
                            else:  # the borders (and a group's last, partial channel vector): every tap checked
                                b, i, j = rows_b[q], rows_i[q], cols_j[q]
                                s0 = simd.zeros(x_flat, lanes)
                                s1 = simd.zeros(x_flat, lanes)
                                for u in range(kernel_h):
                                    row = i * sh - ph + u * dh
                                    for v in range(kernel_w):
                                        col = j * sw - pw + v * dw
                                        weight_uv = simd.splat(kernel[(u * kernel_w + v) * n + q], lanes)
                                        if 0 <= row < height and 0 <= col < width:
                                            start = ((b * height + row) * width + col) * channels + c0
                                            values = simd.load_range(x_flat, start, 0, valid, lanes)
                                        else:  # the zero padding: x_pad = 0, so an infinite weight gives NaN
                                            values = simd.zeros(x_flat, lanes)
                                        if v % 2:
                                            s1 = simd.multiply_add(weight_uv, values, s1)
                                        else:
                                            s0 = simd.multiply_add(weight_uv, values, s0)
                                total = simd.multiply_add(simd.splat(one[0], lanes), s0, s1)
                            simd.store_first(out_flat, p * channels + c0, total, valid)
                    q += 2 if paired else 1
        unit = fetch_add(counter, 1)


@jit
def forward_span(x, hidden, weight, bias, out, kernel_h, kernel_w, sh, sw, ph, pw, dh, dw, per_unit, group_chunks,
                 lanes, workers):
    """The pass on ``workers`` of numba's threads (``prange``), each running :func:`span_units`."""
    counter = np.zeros(1, np.int64)
    for _ in prange(workers):
        span_units(x, hidden, weight, bias, out, kernel_h, kernel_w, sh, sw, ph, pw, dh, dw, per_unit, group_chunks,
                   lanes, counter)


# The argument block of :func:`openmp_worker`, int64 values in this order (:func:`argument_block`): the units'
# counter, the five arrays' addresses, their sizes, the hyper-parameters, the workers' failure flag.
BLOCK_FIELDS = ("counter", "x", "hidden", "weight", "bias", "out", "batch", "height", "width", "channels", "out_h",
                "out_w", "reduced", "generated", "kernel_h", "kernel_w", "sh", "sw", "ph", "pw", "dh", "dw",
                "per_unit", "group_chunks", "failed")
FAILED = BLOCK_FIELDS.index("failed")  # set by a worker whose share raised (a cfunc cannot raise to its caller)


def argument_block(arrays, geometry: Geometry, per_unit: int, group_chunks: int) -> np.ndarray:
    """The int64 argument block of :func:`openmp_worker` for ``arrays`` (as :func:`run` takes them, C-contiguous:
    the worker sees only their addresses and sizes), counter 0. Raises ``ValueError`` for arrays that are not."""
    if not all(type(array) is np.ndarray and array.flags.c_contiguous for array in arrays):
        raise ValueError("the arrays of the span pass must be C-contiguous ndarrays (its worker sees addresses)")
    x, hidden, weight, bias, out = arrays
    _, _, kernel_h, kernel_w, out_h, out_w = geometry.kernel_shape
    values = (0, x.ctypes.data, hidden.ctypes.data, weight.ctypes.data, bias.ctypes.data, out.ctypes.data, *x.shape,
              out_h, out_w, hidden.shape[3], weight.shape[0], kernel_h, kernel_w, *geometry.stride, *geometry.padding,
              *geometry.dilation, per_unit, group_chunks, 0)  # in BLOCK_FIELDS' order
    return np.array(values, np.int64)


@functools.lru_cache(maxsize=None)
def openmp_worker(dtype, lane_count: int):
    """The ``void(void*)`` cfunc that runs :func:`span_units` on the argument block it is given
    (:func:`argument_block`) for float ``dtype`` arrays and ``lane_count`` lanes: what each thread of an OpenMP
    region calls (``involution.fast.openmp``). An exception in a worker sets the block's ``failed`` field.
    Compiled once per ``(dtype, lane_count)``, cached on disk."""
    element = numba.from_dtype(np.dtype(dtype))
    lanes = int(lane_count)

    @numba.cfunc(types.void(types.voidptr), cache=CACHE, nogil=True, error_model="numpy")
    def worker(data):
        block = numba.carray(pointer(data, types.int64), (len(BLOCK_FIELDS),))
        counter = block[:1]
        batch, height, width, channels = block[6], block[7], block[8], block[9]
        out_h, out_w, reduced, generated = block[10], block[11], block[12], block[13]
        x = numba.carray(pointer(block[1], element), (batch, height, width, channels))
        hidden = numba.carray(pointer(block[2], element), (batch, out_h, out_w, reduced))
        weight = numba.carray(pointer(block[3], element), (generated, reduced))
        bias = numba.carray(pointer(block[4], element), (generated,))
        out = numba.carray(pointer(block[5], element), (batch, out_h, out_w, channels))
        try:
            span_units(x, hidden, weight, bias, out, block[14], block[15], block[16], block[17], block[18],
                       block[19], block[20], block[21], block[22], block[23], simd.lanes_of(lanes), counter)
        except Exception:  # e.g. MemoryError from a buffer: the caller raises
            block[FAILED] = 1

    return worker


def shapes(geometry: Geometry, reduced: int) -> tuple[tuple, ...]:
    """The shapes ``(x (B, H, W, C), hidden (B, Ho, Wo, R), weight (G*Kh*Kw, R), bias (G*Kh*Kw,), out (B, Ho, Wo, C))``
    for ``R = reduced`` hidden channels."""
    batch, channels, height, width = geometry.x_shape
    _, groups, kernel_h, kernel_w, out_h, out_w = geometry.kernel_shape
    generated = groups * kernel_h * kernel_w
    return ((batch, height, width, channels), (batch, out_h, out_w, reduced), (generated, reduced), (generated,),
            (batch, out_h, out_w, channels))


def run(arrays, geometry: Geometry, runtime=None) -> None:
    """The span convolution and the forward in one pass, on channels-last arrays; overwrites ``out``.

    Parameters
    ----------
    arrays : tuple ``(x, hidden, weight, bias, out)`` of C-contiguous ndarrays of one dtype, float32 or float64
        Shapes of :func:`shapes` for ``R = hidden.shape[-1]`` (``R >= 1``): ``x (B, H, W, C)``, ``hidden (B, Ho, Wo,
        R)``, the span convolution's ``weight (G*Kh*Kw, R)`` (an ``nn.Conv2d`` weight ``(G*Kh*Kw, R, 1, 1)``
        reshaped) and ``bias (G*Kh*Kw,)``, ``out (B, Ho, Wo, C)``: the memory of torch's ``channels_last`` tensors.
    geometry : Geometry
        From ``involution.spec.check_geometry``, in the (B, C, H, W) convention: ``x`` and the kernel the span
        convolution generates, ``(B, G, Kh, Kw, Ho, Wo)``.
    runtime : involution.fast.openmp.Runtime, optional
        A GNU OpenMP runtime to run the pass on (torch's, from ``involution.torch.span``), while it is usable (not
        in a forked child) and numba's bounds checks are off (``NUMBA_BOUNDSCHECK=1``: a cfunc could not raise their
        IndexError); otherwise numba's threads run it. Either way numba's thread count (``call_threads``)
        gives the number of threads, and the result is the same, bit for bit.

    Raises
    ------
    TypeError
        ``geometry`` not a Geometry.
    ValueError
        ``arrays`` whose count, type (exactly ``np.ndarray``), shapes, dtype or layout do not match ``geometry``; a
        read-only ``out``, or one sharing memory with an input.
    """
    if len(arrays) != 5:
        raise ValueError(f"arrays must be five ndarrays (x, hidden, weight, bias, out), got {len(arrays)}")
    hidden = arrays[1]
    reduced = hidden.shape[-1] if isinstance(hidden, np.ndarray) and hidden.ndim == 4 and hidden.shape[-1] > 0 else -1
    names = ("x", "hidden", "weight", "bias", "out")
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be an involution.spec.Geometry, got {type(geometry).__name__}")
    dtype = arrays[-1].dtype if isinstance(arrays[-1], np.ndarray) else None
    for name, array, shape in zip(names, arrays, shapes(geometry, reduced)):
        if type(array) is not np.ndarray or array.shape != shape or array.dtype != dtype or \
                dtype not in (np.float32, np.float64) or not array.flags.c_contiguous:
            raise ValueError(f"{name} of the span forward must be a C-contiguous float32 or float64 ndarray of shape "
                             f"{shape} (R >= 1) and the result's dtype ({dtype}), got {type(array).__name__} "
                             f"{getattr(array, 'shape', '')} {getattr(array, 'dtype', '')}")
    x, hidden, weight, bias, out = arrays
    if not out.flags.writeable:
        raise ValueError("out of the span forward must be writeable, got a read-only array")
    if any(np.may_share_memory(out, array) for array in arrays[:4]):
        raise ValueError("out of the span forward must not share memory with x, hidden, weight or bias")
    launch(arrays, geometry, runtime)


def launch(arrays, geometry: Geometry, runtime=None, runtime_threads: int | None = None) -> None:
    """:func:`run` without its checks of shapes and dtypes, for callers that made the arrays themselves (the torch
    op: shapes checked, ``out`` new). On ``runtime`` at most ``runtime_threads`` threads (torch's count: see
    ``involution.fast.openmp``). Raises ``RuntimeError`` when a worker on ``runtime`` failed."""
    x, hidden, weight, bias, out = arrays
    if out.size == 0:
        return
    _, _, kernel_h, kernel_w, _, _ = geometry.kernel_shape
    lanes = simd.Lanes(channel_lanes(geometry.group_channels, x.dtype))
    with call_threads() as threads:
        on_runtime = runtime is not None and runtime.usable and not numba.config.BOUNDSCHECK  # a cfunc cannot raise
        if on_runtime and runtime_threads is not None:
            threads = max(1, min(threads, runtime_threads))
        per_unit, group_chunks = work_split(out.shape[0] * out.shape[1] * out.shape[2], geometry.groups, lanes.count,
                                            threads)
        if on_runtime:
            block = argument_block(arrays, geometry, per_unit, group_chunks)
            runtime.run(openmp_worker(x.dtype, lanes.count).address, block, threads)
            if block[FAILED]:
                raise RuntimeError("the span pass failed on an OpenMP thread (a buffer could not be allocated?)")
            return
        with call_guard():
            forward_span(x, hidden, weight, bias, out, kernel_h, kernel_w, *geometry.stride, *geometry.padding,
                         *geometry.dilation, per_unit, group_chunks, lanes, threads)


def work_split(positions: int, groups: int, lanes: int, threads: int) -> tuple[int, int]:
    """``(per_unit, group_chunks)``: units of ``per_unit`` blocks of ``2 * lanes`` positions, each block's groups
    split into ``group_chunks`` units, so that there are about UNITS_PER_THREAD units per thread, which take them
    from a shared counter as they finish. Blocks are split by groups only when there are too few of them (small
    images at batch 1: RedNet-50's 7x7 layers have two blocks)."""
    blocks = -(-positions // (2 * lanes))
    wanted = UNITS_PER_THREAD * threads
    if blocks >= wanted:
        return blocks // wanted, 1
    return 1, max(1, min(groups, -(-wanted // max(1, blocks))))
