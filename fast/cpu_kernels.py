"""Numbered numba CPU kernels for the involution op (llm.c style: v1 naive, higher versions faster).

Every kernel takes validated C-contiguous arrays and a preallocated C-contiguous result it overwrites
completely; each result element is computed and written by one ``prange`` iteration (no atomics), in a
fixed summation order (bitwise reproducible for any thread count). ``involution.fast.cpu`` validates,
allocates and picks the version; ``tests/test_fast_cpu.py`` checks each version against the NumPy reference.

Sizes: ``x (B, C, H, W)``, ``kernel (B, G, Kh, Kw, Ho, Wo)``, ``out / grad_out (B, C, Ho, Wo)``,
channel ``c`` in group ``c // (C // G)``; ``sh, sw`` stride, ``ph, pw`` padding, ``dh, dw`` dilation.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .index import cpu_helpers
from .runtime import CACHE

_helpers = cpu_helpers()
input_coordinate = _helpers["input_coordinate"]
group_of_channel = _helpers["group_of_channel"]
output_of_input = _helpers["output_of_input"]
output_range = _helpers["output_range"]
split_index = _helpers["split_index"]
kernel_offset = _helpers["kernel_offset"]

jit = numba.njit(parallel=True, cache=CACHE, nogil=True)
inline = numba.njit(inline="always", cache=CACHE)


_chunksize_setter = None  # numba's C setter of this thread's chunk size, looked up by the first set_chunksize


def set_chunksize(size: int) -> int:
    """Set this thread's chunk size for parallel loops to ``size`` (>= 0, 0: numba's default); return the previous
    one. ``numba.set_parallel_chunksize`` without its per-call checks: numba's C setter, called through ctypes (a
    ``UnitChunks`` block about 1.3 us, against 3.9 for ``numba.parallel_chunksize``). A jitted setter is 0.4 us
    faster per block but cannot be cached (the setter's address is a dynamic global): each new process compiled it,
    0.08-0.15 s on top of loading the cached kernels."""
    global _chunksize_setter
    if _chunksize_setter is None:
        numba.get_parallel_chunksize()  # launches numba's threading layer, which defines the setter
        from numba.np.ufunc import parallel

        _chunksize_setter = getattr(parallel, "_set_parallel_chunksize", numba.set_parallel_chunksize)
    return _chunksize_setter(size)


class UnitChunks:
    """``with UnitChunks():`` parallel loops hand out one iteration at a time (chunk size 1: units to whichever
    thread is free, not equal shares decided up front); the caller's chunk size is restored after. The chunk size is
    numba's per calling thread, so Python threads calling kernels at once do not see each other's."""

    def __enter__(self):
        self.previous = set_chunksize(1)

    def __exit__(self, *exception):
        set_chunksize(self.previous)


@inline
def multiply_add_flat(target, target_start, target_step, left, left_start, right, right_start, right_step, count):
    """``target[t0 + j*ts] += left[l0 + j] * right[r0 + j*rs]`` for ``j < count`` on flat arrays.

    Unsigned indices spare numba's negative-index wraparound, so LLVM vectorises the loop (and versions it
    for unit steps); no array views are made, so no reference counting in the hot loop.
    """
    for j in range(count):
        target[numba.uint64(target_start + j * target_step)] += (
            left[numba.uint64(left_start + j)] * right[numba.uint64(right_start + j * right_step)])


@inline
def multiply_add_padding(target, target_start, left, left_start, lo, hi, count):
    """``target[t0 + j] += left[l0 + j] * 0`` for ``j`` in ``[0, lo)`` and ``[hi, count)``: the taps that read
    the zero padding, which the definition multiplies too (``inf * 0 = NaN``; finite sums do not change)."""
    for j in range(lo):
        target[target_start + j] += left[left_start + j] * 0.0
    for j in range(hi, count):
        target[target_start + j] += left[left_start + j] * 0.0


# ---------------------------------------------------------------------------------------------- forward
@jit
def forward_v1(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Naive: one output element at a time, every tap bounds-checked (padded taps multiply 0); threads
    over (b, c)."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    for bc in prange(batch * channels):
        b, c = bc // channels, bc % channels
        g = group_of_channel(c, channels // groups)
        for i in range(out_h):
            for j in range(out_w):
                out[b, c, i, j] = 0
                for u in range(kernel_h):
                    row = input_coordinate(i, u, sh, dh, ph)
                    for v in range(kernel_w):
                        col = input_coordinate(j, v, sw, dw, pw)
                        if 0 <= row < height and 0 <= col < width:
                            out[b, c, i, j] += kernel[b, g, u, v, i, j] * x[b, c, row, col]
                        else:  # the zero padding: x_pad = 0, so an infinite weight gives NaN
                            out[b, c, i, j] += kernel[b, g, u, v, i, j] * 0.0


# ------------------------------------------------------------------------------------ grad wrt kernel
@jit
def grad_kernel_v1(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Naive: one kernel element at a time, summing the group's channels; threads over (b, g)."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    for bg in prange(batch * groups):
        b, g = bg // groups, bg % groups
        for u in range(kernel_h):
            for v in range(kernel_w):
                for i in range(out_h):
                    row = input_coordinate(i, u, sh, dh, ph)
                    for j in range(out_w):
                        col = input_coordinate(j, v, sw, dw, pw)
                        grad_kernel[b, g, u, v, i, j] = 0
                        inside = 0 <= row < height and 0 <= col < width
                        for c in range(g * group_channels, (g + 1) * group_channels):
                            if inside:
                                grad_kernel[b, g, u, v, i, j] += grad_out[b, c, i, j] * x[b, c, row, col]
                            else:  # x_pad = 0: an infinite grad_out gives NaN
                                grad_kernel[b, g, u, v, i, j] += grad_out[b, c, i, j] * 0.0


# ------------------------------------------------------------------------------------- grad wrt input
@jit
def grad_x_v1(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):
    """Naive gather: each input element sums the (tap, output) pairs that read it; threads over (b, c)."""
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    for bc in prange(batch * channels):
        b, c = bc // channels, bc % channels
        g = group_of_channel(c, channels // groups)
        for y in range(height):
            for z in range(width):
                grad_x[b, c, y, z] = 0
                for u in range(kernel_h):
                    i = output_of_input(y, u, sh, dh, ph, out_h)
                    for v in range(kernel_w):
                        j = output_of_input(z, v, sw, dw, pw, out_w)
                        if i >= 0 and j >= 0:
                            grad_x[b, c, y, z] += kernel[b, g, u, v, i, j] * grad_out[b, c, i, j]


# ------------------------------------------------------------------------- v2: row-wise, flat arrays
@jit
def forward_v2(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Row-wise: threads over (b, g, i); per tap, the kernel row is reused by the group's channels, the W
    loop is clipped to the taps inside the input (no branch) and contiguous for stride 1 (SIMD); the
    clipped taps multiply the zero padding apart."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    for unit in prange(batch * groups * out_h):
        b, g, i = split_index(unit, groups, out_h)
        first = b * channels + g * group_channels  # flat (b, c) index of the group's first channel
        for c in range(first, first + group_channels):
            out_flat[(c * out_h + i) * out_w:(c * out_h + i + 1) * out_w] = 0
        for u in range(kernel_h):
            row = input_coordinate(i, u, sh, dh, ph)
            inside = 0 <= row < height
            for v in range(kernel_w):
                lo, hi = output_range(v, sw, dw, pw, width, out_w) if inside else (0, 0)
                col0 = input_coordinate(0, v, sw, dw, pw)
                kernel_start = kernel_offset(b, g, u, v, i, groups, kernel_h, kernel_w, out_h, out_w)
                for c in range(first, first + group_channels):
                    out_start = (c * out_h + i) * out_w
                    multiply_add_flat(out_flat, out_start + lo, 1, kernel_flat, kernel_start + lo,
                                      x_flat, (c * height + row) * width + col0 + lo * sw, sw, hi - lo)
                    multiply_add_padding(out_flat, out_start, kernel_flat, kernel_start, lo, hi, out_w)


@jit
def grad_kernel_v2(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Row-wise like ``forward_v2``: threads over (b, g, i); each kernel row sums the group's channels along
    the clipped W range, and ``grad_out * 0`` on the taps reading the padding."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    x_flat, grad_out_flat, grad_kernel_flat = x.reshape(-1), grad_out.reshape(-1), grad_kernel.reshape(-1)
    for unit in prange(batch * groups * out_h):
        b, g, i = split_index(unit, groups, out_h)
        first = b * channels + g * group_channels
        for u in range(kernel_h):
            row = input_coordinate(i, u, sh, dh, ph)
            inside = 0 <= row < height
            for v in range(kernel_w):
                grad_start = kernel_offset(b, g, u, v, i, groups, kernel_h, kernel_w, out_h, out_w)
                grad_kernel_flat[grad_start:grad_start + out_w] = 0
                lo, hi = output_range(v, sw, dw, pw, width, out_w) if inside else (0, 0)
                col0 = input_coordinate(0, v, sw, dw, pw)
                for c in range(first, first + group_channels):
                    grad_out_start = (c * out_h + i) * out_w
                    multiply_add_flat(grad_kernel_flat, grad_start + lo, 1, grad_out_flat, grad_out_start + lo,
                                      x_flat, (c * height + row) * width + col0 + lo * sw, sw, hi - lo)
                    multiply_add_padding(grad_kernel_flat, grad_start, grad_out_flat, grad_out_start, lo, hi, out_w)


@jit
def grad_x_v2(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):
    """Row gather: threads over input rows (b, g, y); row ``y`` collects every tap row ``u`` whose output row
    reads it (``output_of_input``), along the clipped W range."""
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    kernel_flat, grad_out_flat, grad_x_flat = kernel.reshape(-1), grad_out.reshape(-1), grad_x.reshape(-1)
    for unit in prange(batch * groups * height):
        b, g, y = split_index(unit, groups, height)
        first = b * channels + g * group_channels
        for c in range(first, first + group_channels):
            grad_x_flat[(c * height + y) * width:(c * height + y + 1) * width] = 0
        for u in range(kernel_h):
            i = output_of_input(y, u, sh, dh, ph, out_h)
            if i < 0:
                continue
            for v in range(kernel_w):
                lo, hi = output_range(v, sw, dw, pw, width, out_w)
                col0 = input_coordinate(0, v, sw, dw, pw)
                kernel_start = kernel_offset(b, g, u, v, i, groups, kernel_h, kernel_w, out_h, out_w) + lo
                for c in range(first, first + group_channels):
                    multiply_add_flat(grad_x_flat, (c * height + y) * width + col0 + lo * sw, sw, grad_out_flat,
                                      (c * out_h + i) * out_w + lo, kernel_flat, kernel_start, 1, hi - lo)


# ------------------------------------------------ v3: stride-phase tiles and wide rows, long SIMD loops
# v2's SIMD loops run along one output row: 7 or 14 elements on RedNet's late stages, where LLVM's
# vector body (8 lanes, unrolled) never starts. v3 copies, per (b, g, band of rows), the zero-padded input
# split by stride phase, P[c, ru, rv, r, q] = x[c, sh*r + ru - ph, sw*q + rv - pw], and lays outputs,
# kernels and P out "wide" (row pitch Wq = Wo + (Kw-1)*dw // sw): then tap (u, v) with u*dh = sh*qu + ru,
# v*dw = sw*qv + rv reads P[c, ru, rv] at the flat offset qu*Wq + qv from the output's flat index, so each
# tap of each channel is ONE contiguous multiply-add over the whole band; columns j >= Wo are dropped.
# Scratch is allocated once per worker (numba's thread count, passed by a plain-Python wrapper so that the
# kernels stay cacheable), and units are dealt round-robin,
# so the result does not depend on the worker count. Its size (``*_scratch``, plain Python so that
# involution.fast.cpu sizes it exactly, in Python ints, before a kernel runs) grows with sh*sw and with the
# kernel's reach (Kw-1)*dw // sw, not only with the work: the dispatcher runs v3 and v4 only where it is
# bounded by the arrays' own size (``involution.fast.cpu.SCRATCH_RATIO``).
BAND_ELEMENTS = 512  # wide elements per band: long enough for SIMD, small enough for L1/L2
SIMD_BLOCK = 32  # LLVM's vector body (8 float32 lanes x 4) takes this many elements; loops round up to it


def simd_length(length):
    """``length`` rounded up to whole vector bodies: the extra lanes compute junk nobody reads, no scalar tail."""
    return (length + SIMD_BLOCK - 1) // SIMD_BLOCK * SIMD_BLOCK


def wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw):
    """``(reach_h, wide, band)``: phase rows past a band, the wide row pitch, output rows per band."""
    reach_h, reach_w = (kernel_h - 1) * dh // sh, (kernel_w - 1) * dw // sw
    wide = out_w + reach_w
    band = min(out_h, max(1, (BAND_ELEMENTS + wide - 1) // wide))
    return reach_h, wide, band


def forward_scratch(channel_block, group_channels, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw):
    """Per-worker scratch lengths ``(phases, kernel_wide, out_wide)`` of the forward passing ``channel_block``
    channels at a time (v3: 1, v4: ``CHANNEL_BLOCK``): phases of the group's channels (and a spare zero
    channel for an odd last block), the band's wide kernel taps, one wide output row set per channel."""
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    channel_step = sh * sw * (band + reach_h) * wide
    return ((group_channels + channel_block - 1) * channel_step + SIMD_BLOCK,
            kernel_h * kernel_w * band * wide + SIMD_BLOCK, channel_block * (band * wide + SIMD_BLOCK))


def grad_kernel_scratch(group_channels, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw):
    """Per-worker scratch lengths ``(phases, grad_out_wide, grad_wide)`` of ``grad_kernel_v3``."""
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    return (group_channels * sh * sw * (band + reach_h) * wide + SIMD_BLOCK,
            group_channels * band * wide + SIMD_BLOCK, band * wide + SIMD_BLOCK)


def grad_x_layout(height, out_h, out_w, kernel_h, kernel_w, sh, sw, ph, dh, dw):
    """``(reach_h, wide, band, phase_rows)`` of ``grad_x_v3``: bands of the phase rows holding input rows."""
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    phase_rows = (height + ph - 1) // sh + 1  # r = (y + ph) // sh
    return reach_h, wide, min(band, phase_rows), phase_rows


def grad_x_scratch(group_channels, height, out_h, out_w, kernel_h, kernel_w, sh, sw, ph, dh, dw):
    """Per-worker scratch lengths ``(kernel_wide, grad_out_wide, gathered)`` of ``grad_x_v3``: wide sources
    with one leading zero row and the reach above the band."""
    reach_h, wide, band, _ = grad_x_layout(height, out_h, out_w, kernel_h, kernel_w, sh, sw, ph, dh, dw)
    span = (band + reach_h + 1) * wide
    return (kernel_h * kernel_w * span + SIMD_BLOCK, group_channels * span + SIMD_BLOCK,
            simd_length(band * wide))


simd_length, wide_layout, forward_scratch, grad_kernel_scratch, grad_x_layout, grad_x_scratch = (
    inline(function) for function in (simd_length, wide_layout, forward_scratch, grad_kernel_scratch,
                                      grad_x_layout, grad_x_scratch))


@inline
def band_of_unit(unit, groups, bands, band, rows_total):
    """``(b, g, row0, rows)`` of work unit ``unit``: batch, group and the band's first row and row count."""
    b, g, band_index = split_index(unit, groups, bands)
    row0 = band_index * band
    return b, g, row0, min(band, rows_total - row0)


@inline
def load_phases(x_flat, phases, first, group_channels, height, width, sh, sw, ph, pw, row0, phase_rows, wide):
    """``phases[c, ru, rv, r, q] = x[first + c, sh*(row0 + r) + ru - ph, sw*q + rv - pw]``, zero outside x."""
    phases[:] = 0
    plane = phase_rows * wide
    for c in range(group_channels):
        for ru in range(sh):
            for rv in range(sw):
                lo, hi = output_range(rv, sw, 1, pw, width, wide)
                col0 = input_coordinate(0, rv, sw, 1, pw)
                start = ((c * sh + ru) * sw + rv) * plane
                for r in range(phase_rows):
                    y = input_coordinate(row0 + r, ru, sh, 1, ph)
                    if 0 <= y < height:
                        source = ((first + c) * height + y) * width + col0
                        for q in range(lo, hi):
                            phases[numba.uint64(start + r * wide + q)] = x_flat[numba.uint64(source + q * sw)]


@inline
def load_wide_rows(source_flat, source_start, wide_flat, wide_start, out_h, out_w, wide, row0, rows):
    """``wide[r*wide + j] = source[row0 + r, j]`` for ``j < out_w``; zero for junk columns and rows outside."""
    for r in range(rows):
        target = wide_start + r * wide
        if 0 <= row0 + r < out_h:
            source = source_start + (row0 + r) * out_w
            for j in range(out_w):
                wide_flat[numba.uint64(target + j)] = source_flat[numba.uint64(source + j)]
            wide_flat[target + out_w:target + wide] = 0
        else:
            wide_flat[target:target + wide] = 0


@inline
def load_kernel_band(kernel_flat, kernel_wide, b, g, groups, taps, out_h, out_w, wide, span, row0, rows):
    """Every tap's kernel rows ``[row0, row0 + rows)`` of (b, g) into ``kernel_wide`` (span ``span`` per tap),
    zero past a short last band."""
    for tap in range(taps):
        load_wide_rows(kernel_flat, kernel_offset(b, g, 0, tap, 0, groups, 1, taps, out_h, out_w), kernel_wide,
                       tap * span, out_h, out_w, wide, row0, rows)
        kernel_wide[tap * span + rows * wide:(tap + 1) * span] = 0


@inline
def store_wide_rows(wide_flat, wide_start, wide, target_flat, target_start, out_w, rows):
    """``target[r, j] = wide[r*wide + j]`` for ``r < rows``, ``j < out_w``: drop the junk columns."""
    for r in range(rows):
        target_flat[target_start + r * out_w:target_start + (r + 1) * out_w] = (
            wide_flat[wide_start + r * wide:wide_start + r * wide + out_w])


@inline
def load_forward_band(x_flat, kernel_flat, phases, kernel_wide, unit, channels, groups, group_channels, height,
                      width, kernel_h, kernel_w, out_h, out_w, sh, sw, ph, pw, reach_h, wide, band, bands):
    """Load work unit ``unit``'s phases and wide kernel taps; return ``(i0, rows, first, length)``: its first
    output row, row count, flat (b, c) index of its first channel and SIMD loop length."""
    b, g, i0, rows = band_of_unit(unit, groups, bands, band, out_h)
    first = b * channels + g * group_channels
    load_phases(x_flat, phases, first, group_channels, height, width, sh, sw, ph, pw, i0, band + reach_h, wide)
    load_kernel_band(kernel_flat, kernel_wide, b, g, groups, kernel_h * kernel_w, out_h, out_w, wide, band * wide,
                     i0, rows)
    return i0, rows, first, simd_length((rows - 1) * wide + out_w)


@jit
def forward_bands_v3(x, kernel, out, sh, sw, ph, pw, dh, dw, workers):
    """``forward_v3`` with one scratch set for each of ``workers`` threads (cacheable: no global)."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    phases_length, kernel_length, out_length = forward_scratch(1, group_channels, out_h, out_w, kernel_h, kernel_w,
                                                               sh, sw, dh, dw)
    bands = (out_h + band - 1) // band
    plane, span = (band + reach_h) * wide, band * wide
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    units = batch * groups * bands
    workers = min(workers, units)
    for worker in prange(workers):  # one scratch set per thread, units dealt round-robin
        phases = np.empty(phases_length, x.dtype)
        kernel_wide = np.empty(kernel_length, x.dtype)
        kernel_wide[kernel_length - SIMD_BLOCK:] = 0
        out_wide = np.empty(out_length, x.dtype)
        for unit in range(worker, units, workers):
            i0, rows, first, length = load_forward_band(x_flat, kernel_flat, phases, kernel_wide, unit, channels,
                                                        groups, group_channels, height, width, kernel_h, kernel_w,
                                                        out_h, out_w, sh, sw, ph, pw, reach_h, wide, band, bands)
            for c in range(group_channels):
                out_wide[:] = 0
                for u in range(kernel_h):
                    qu, ru = u * dh // sh, u * dh % sh
                    for v in range(kernel_w):
                        qv, rv = v * dw // sw, v * dw % sw
                        start = ((c * sh + ru) * sw + rv) * plane + qu * wide + qv
                        multiply_add_flat(out_wide, 0, 1, kernel_wide, (u * kernel_w + v) * span, phases, start, 1,
                                          length)
                store_wide_rows(out_wide, 0, wide, out_flat, ((first + c) * out_h + i0) * out_w, out_w, rows)


def forward_v3(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Wide rows: per (b, g, band), every (tap, channel) is one contiguous multiply-add over the band."""
    forward_bands_v3(x, kernel, out, sh, sw, ph, pw, dh, dw, numba.get_num_threads())


@jit
def grad_kernel_bands_v3(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, workers):
    """``grad_kernel_v3`` with one scratch set for each of ``workers`` threads (cacheable: no global)."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    phases_length, grad_out_length, grad_length = grad_kernel_scratch(group_channels, out_h, out_w, kernel_h,
                                                                      kernel_w, sh, sw, dh, dw)
    bands = (out_h + band - 1) // band
    plane, span = (band + reach_h) * wide, band * wide
    x_flat, grad_out_flat, grad_kernel_flat = x.reshape(-1), grad_out.reshape(-1), grad_kernel.reshape(-1)
    units = batch * groups * bands
    workers = min(workers, units)
    for worker in prange(workers):
        phases = np.empty(phases_length, x.dtype)
        grad_out_wide = np.empty(grad_out_length, x.dtype)
        grad_out_wide[grad_out_length - SIMD_BLOCK:] = 0
        grad_wide = np.empty(grad_length, x.dtype)
        for unit in range(worker, units, workers):
            b, g, i0, rows = band_of_unit(unit, groups, bands, band, out_h)
            length = simd_length((rows - 1) * wide + out_w)
            first = b * channels + g * group_channels
            load_phases(x_flat, phases, first, group_channels, height, width, sh, sw, ph, pw, i0, band + reach_h,
                        wide)
            for c in range(group_channels):
                load_wide_rows(grad_out_flat, (first + c) * out_h * out_w, grad_out_wide, c * span, out_h, out_w,
                               wide, i0, rows)
                grad_out_wide[c * span + rows * wide:(c + 1) * span] = 0
            for u in range(kernel_h):
                qu, ru = u * dh // sh, u * dh % sh
                for v in range(kernel_w):
                    qv, rv = v * dw // sw, v * dw % sw
                    grad_wide[:] = 0
                    for c in range(group_channels):
                        start = ((c * sh + ru) * sw + rv) * plane + qu * wide + qv
                        multiply_add_flat(grad_wide, 0, 1, grad_out_wide, c * span, phases, start, 1, length)
                    target = kernel_offset(b, g, u, v, i0, groups, kernel_h, kernel_w, out_h, out_w)
                    store_wide_rows(grad_wide, 0, wide, grad_kernel_flat, target, out_w, rows)


def grad_kernel_v3(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Wide rows like ``forward_v3``: each kernel tap's band sums the group's channels in contiguous loops."""
    grad_kernel_bands_v3(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, numba.get_num_threads())


@jit
def grad_x_bands_v3(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, workers):
    """``grad_x_v3`` with one scratch set for each of ``workers`` threads (cacheable: no global)."""
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    reach_h, wide, band, phase_rows = grad_x_layout(height, out_h, out_w, kernel_h, kernel_w, sh, sw, ph, dh, dw)
    kernel_length, grad_out_length, gathered_length = grad_x_scratch(group_channels, height, out_h, out_w, kernel_h,
                                                                     kernel_w, sh, sw, ph, dh, dw)
    bands = (phase_rows + band - 1) // band
    source_rows = band + reach_h + 1
    span, taps = source_rows * wide, kernel_h * kernel_w
    kernel_flat, grad_out_flat, grad_x_flat = kernel.reshape(-1), grad_out.reshape(-1), grad_x.reshape(-1)
    units = batch * groups * bands
    workers = min(workers, units)
    for worker in prange(workers):
        kernel_wide = np.empty(kernel_length, kernel.dtype)
        kernel_wide[kernel_length - SIMD_BLOCK:] = 0
        grad_out_wide = np.empty(grad_out_length, kernel.dtype)
        grad_out_wide[grad_out_length - SIMD_BLOCK:] = 0
        gathered = np.empty(gathered_length, kernel.dtype)
        for unit in range(worker, units, workers):
            b, g, r0, rows = band_of_unit(unit, groups, bands, band, phase_rows)
            length = simd_length(rows * wide)
            first = b * channels + g * group_channels
            row0 = r0 - reach_h - 1  # output row of the sources' first (zero) row
            for tap in range(taps):
                load_wide_rows(kernel_flat, kernel_offset(b, g, 0, tap, 0, groups, 1, taps, out_h, out_w), kernel_wide,
                               tap * span, out_h, out_w, wide, row0, source_rows)
            for c in range(group_channels):
                load_wide_rows(grad_out_flat, (first + c) * out_h * out_w, grad_out_wide, c * span, out_h, out_w,
                               wide, row0, source_rows)
            for c in range(group_channels):
                for ru in range(sh):
                    for rv in range(sw):
                        gathered[:] = 0
                        for u in range(kernel_h):
                            if u * dh % sh != ru:
                                continue
                            for v in range(kernel_w):
                                if v * dw % sw != rv:
                                    continue
                                offset = (reach_h + 1 - u * dh // sh) * wide - v * dw // sw
                                multiply_add_flat(gathered, 0, 1, kernel_wide, (u * kernel_w + v) * span + offset,
                                                  grad_out_wide, c * span + offset, 1, length)
                        # Input columns past the wide rows (q >= Wq) are read by no tap: their gradient is 0.
                        lo, hi = output_range(rv, sw, 1, pw, width, width + pw)
                        col0 = input_coordinate(0, rv, sw, 1, pw)
                        for r in range(rows):
                            y = input_coordinate(r0 + r, ru, sh, 1, ph)
                            if 0 <= y < height:
                                target = ((first + c) * height + y) * width + col0
                                for q in range(lo, min(hi, wide)):
                                    grad_x_flat[numba.uint64(target + q * sw)] = gathered[numba.uint64(r * wide + q)]
                                for q in range(max(lo, wide), hi):
                                    grad_x_flat[numba.uint64(target + q * sw)] = 0


def grad_x_v3(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):
    """Wide rows, gathered: per (b, g, band of phase rows r), phase (ru, rv) of the padded input collects the
    taps with that phase, ``P'[r, q] += kernel[u, v, r - qu, q - qv] * grad_out[c, r - qu, q - qv]``, from
    wide copies of kernel and grad_out that are zero in junk columns and outside the output (one leading
    zero row absorbs ``q - qv < 0``); each input element is written once, by the unit owning its row."""
    grad_x_bands_v3(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, numba.get_num_threads())


# ------------------------------------------------------- v4: a kernel row per pass, two channels per load
# v3's loop loads and stores its accumulator for every tap. v4 keeps v3's bands, phases and wide kernel copies
# but runs one loop per kernel row u: it sums the row's Kw taps in registers (Kw is the length of the tuple
# arguments, a compile-time constant, so LLVM unrolls the tap loop and vectorises along the band) for
# CHANNEL_BLOCK channels at once, each kernel value loaded once for them. Same summation order as v3.
CHANNEL_BLOCK = 2  # channels per pass; larger blocks need more alias checks than LLVM's vectoriser allows
# Widest kernel row v4 unrolls (one compile per Kw); numba's parfor lowering rejects tuples past ~100
# elements (UnsupportedParforsError), and the dispatcher runs v3 for wider rows.
MAX_ROW_TAPS = 32


@inline
def multiply_add_tap_row(out_wide, pitch, kernel_wide, kernel_start, span, phases, start, channel_step, plane,
                         column_phase, column_shift, length):
    """``out_wide[n*pitch + j] += sum_v kernel_wide[kernel_start + v*span + j]
    * phases[start + n*channel_step + column_phase[v]*plane + column_shift[v] + j]`` for channels ``n < 2``."""
    for j in range(length):
        first_channel = out_wide[numba.uint64(j)]
        second_channel = out_wide[numba.uint64(pitch + j)]
        for v in range(len(column_phase)):
            weight = kernel_wide[numba.uint64(kernel_start + v * span + j)]
            offset = start + column_phase[v] * plane + column_shift[v] + j
            first_channel += weight * phases[numba.uint64(offset)]
            second_channel += weight * phases[numba.uint64(offset + channel_step)]
        out_wide[numba.uint64(j)] = first_channel
        out_wide[numba.uint64(pitch + j)] = second_channel


@jit
def forward_rows_v4(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, column_phase, column_shift):
    """``forward_v4`` given tap column ``v``'s stride phase ``v*dw % sw`` and shift ``v*dw // sw`` as tuples."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    phases_length, kernel_length, out_length = forward_scratch(CHANNEL_BLOCK, group_channels, out_h, out_w, kernel_h,
                                                               kernel_w, sh, sw, dh, dw)
    bands = (out_h + band - 1) // band
    plane, span = (band + reach_h) * wide, band * wide
    channel_step, pitch = sh * sw * plane, span + SIMD_BLOCK
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    units = batch * groups * bands
    workers = min(workers, units)
    for worker in prange(workers):  # one scratch set per thread, units dealt round-robin
        # one spare channel of zero phases: an odd group's last pass reads it and drops the result
        phases = np.empty(phases_length, x.dtype)
        kernel_wide = np.empty(kernel_length, x.dtype)
        kernel_wide[kernel_length - SIMD_BLOCK:] = 0
        out_wide = np.empty(out_length, x.dtype)
        for unit in range(worker, units, workers):
            i0, rows, first, length = load_forward_band(x_flat, kernel_flat, phases, kernel_wide, unit, channels,
                                                        groups, group_channels, height, width, kernel_h, kernel_w,
                                                        out_h, out_w, sh, sw, ph, pw, reach_h, wide, band, bands)
            for c in range(0, group_channels, CHANNEL_BLOCK):
                out_wide[:] = 0
                for u in range(kernel_h):
                    qu, ru = u * dh // sh, u * dh % sh
                    multiply_add_tap_row(out_wide, pitch, kernel_wide, u * kernel_w * span, span, phases,
                                         (c * sh + ru) * sw * plane + qu * wide, channel_step, plane, column_phase,
                                         column_shift, length)
                for n in range(min(CHANNEL_BLOCK, group_channels - c)):
                    store_wide_rows(out_wide, n * pitch, wide, out_flat, ((first + c + n) * out_h + i0) * out_w, out_w,
                                    rows)


def forward_v4(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Kernel rows in registers: per (b, g, band) and pair of channels, each kernel row is one vector loop
    (kernel rows up to ``MAX_ROW_TAPS`` wide)."""
    kernel_w = kernel.shape[3]
    if kernel_w > MAX_ROW_TAPS:
        raise ValueError(f"forward_v4 unrolls kernel rows up to MAX_ROW_TAPS={MAX_ROW_TAPS} taps, got Kw={kernel_w}; "
                         f"use version 3 (or version=None, which picks it)")
    columns = range(0, kernel_w * dw, dw)  # v * dw for each tap column v
    forward_rows_v4(x, kernel, out, sh, sw, ph, pw, dh, dw, numba.get_num_threads(),
                    tuple(column % sw for column in columns),
                    tuple(column // sw for column in columns))


grad_x_v4, grad_kernel_v4 = grad_x_v3, grad_kernel_v3  # v4 changes only the forward


# ---------------------------------------- v5: channels-last group copies, channel vectors held in registers
# v3 and v4 vectorise along output positions and spend 37-72% of their time building stride-phase and wide
# kernel copies. v5 vectorises along channels instead: per (b, g, block of LANES channels, band of output rows),
# one pass copies the band's padded input rows channels-last, S[r, q, l] = x_pad[c0 + l, y0 + r, q]; then every
# output position is one ``simd.Vector`` of its LANES channels, and tap (u, v) is one kernel value broadcast
# against one vector load, multiply-added in a register. POSITIONS consecutive output positions (flat over the
# band, so rows of 7 leave no tail) are accumulated at once in local vectors, which LLVM keeps in registers.
# The kernel is read where it lies: the POSITIONS values of a tap are consecutive. Scratch: one channels-last
# band per thread (``numba.get_thread_id``), bounded by SCRATCH_ELEMENTS; units are scheduled one at a time
# (parallel chunk size 1), so a descheduled thread holds up at most one unit. Same summation order as v1-v4.
from . import simd  # noqa: E402  (v5's vocabulary, kept in its own section)

POSITIONS = 4  # output positions accumulated together: 4 independent multiply-add chains per tap
SCRATCH_ELEMENTS = 1 << 15  # a channels-last band per thread: 128 KiB of float32, inside L2
UNITS_PER_THREAD = 8  # aim for this many units per thread, so that dynamic scheduling can balance them


@inline
def channel_block_unit(unit, groups, blocks, bands, band, rows_total, channels, group_channels, lane_count):
    """``(b, g, row0, rows, c0, valid)`` of a channel-vector work unit (``unit`` runs over batch, group, block of
    ``lane_count`` channels, band of ``band`` rows): the band's first row and row count, the flat ``(b, c)`` index of
    the block's first channel and how many of its lanes hold channels."""
    image, block, row0 = unit // (blocks * bands), unit // bands % blocks, unit % bands * band
    b, g = image // groups, image % groups
    return (b, g, row0, min(band, rows_total - row0), b * channels + g * group_channels + block * lane_count,
            min(lane_count, group_channels - block * lane_count))


@inline
def load_channels_last(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw):
    """``scratch[start + (r*wide + q)*lanes + l] = x[c0 + l, y0 + r, q - pw]`` for ``l < valid``; zero in the
    padding, past the image and in lanes ``l >= valid``."""
    row_length = wide * lanes
    inside_lo = min(pw, wide)
    inside_hi = max(inside_lo, min(wide, width + pw))
    for r in range(rows):
        y = y0 + r
        row_start = start + r * row_length
        if y < 0 or y >= height:
            scratch[row_start:row_start + row_length] = 0
            continue
        scratch[row_start:row_start + inside_lo * lanes] = 0
        scratch[row_start + inside_hi * lanes:row_start + row_length] = 0
        for l in range(lanes):
            if l < valid:
                source = ((c0 + l) * height + y) * width - pw
                for q in range(inside_lo, inside_hi):
                    scratch[numba.uint64(row_start + q * lanes + l)] = x_flat[numba.uint64(source + q)]
            else:
                for q in range(inside_lo, inside_hi):
                    scratch[numba.uint64(row_start + q * lanes + l)] = 0


@inline
def multiply_add_four(kernel_flat, k, scratch, s, step, lanes, a0, a1, a2, a3):
    """One tap of four positions: ``a_p + kernel_flat[k + p] * scratch[s + p*step : ... + lanes]`` for ``p < 4``,
    each kernel value broadcast against its position's channel vector."""
    return (simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k)], lanes), simd.load(scratch, s, lanes), a0),
            simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 1)], lanes), simd.load(scratch, s + step, lanes),
                              a1),
            simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 2)], lanes),
                              simd.load(scratch, s + 2 * step, lanes), a2),
            simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 3)], lanes),
                              simd.load(scratch, s + 3 * step, lanes), a3))


@inline
def multiply_add_taps_four(kernel_flat, kernel_start, plane, scratch, start, position_step, kernel_h, kernel_w,
                           row_step, column_step, lanes):
    """Four consecutive output positions' channel vectors: ``sum_{u,v} kernel[kernel_start + (u*Kw + v)*plane + p]
    * scratch[start + p*position_step + u*row_step + v*column_step : ... + lanes]`` for ``p < 4``."""
    a0 = a1 = a2 = a3 = simd.zeros(scratch, lanes)
    for u in range(kernel_h):
        for v in range(kernel_w):
            k = kernel_start + (u * kernel_w + v) * plane
            x = start + u * row_step + v * column_step
            a0, a1, a2, a3 = multiply_add_four(kernel_flat, k, scratch, x, position_step, lanes, a0, a1, a2, a3)
    return a0, a1, a2, a3


@inline
def multiply_add_taps_one(kernel_flat, kernel_start, plane, scratch, start, kernel_h, kernel_w, row_step,
                          column_step, lanes):
    """``multiply_add_taps_four`` for one position: rows narrower than a block."""
    a0 = simd.zeros(scratch, lanes)
    for u in range(kernel_h):
        for v in range(kernel_w):
            weight = kernel_flat[numba.uint64(kernel_start + (u * kernel_w + v) * plane)]
            a0 = simd.multiply_add(simd.splat(weight, lanes),
                                   simd.load(scratch, start + u * row_step + v * column_step, lanes), a0)
    return a0


@jit
def forward_channels_v5(x, kernel, out, sh, sw, ph, pw, dh, dw, threads, lanes, band):
    """``forward_v5`` for ``lanes`` (a ``simd.Lanes``: channels per vector) and ``band`` output rows per unit;
    ``threads`` must be ``numba.get_num_threads()``: one scratch slot per thread id."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)  # channels per vector
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1  # padded input columns the taps read
    slot = ((band - 1) * sh + (kernel_h - 1) * dh + 1) * wide * lane_count
    plane, taps = out_h * out_w, kernel_h * kernel_w
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    scratch = np.empty(threads * slot, x.dtype)
    units = batch * groups * blocks * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        b, g, i0, rows, c0, valid = channel_block_unit(unit, groups, blocks, bands, band, out_h, channels,
                                                       group_channels, lane_count)
        load_channels_last(x_flat, scratch, start, c0, valid, lane_count, height, width, i0 * sh - ph,
                           (rows - 1) * sh + (kernel_h - 1) * dh + 1, wide, pw)
        for i in range(i0, i0 + rows):
            kernel_row = (b * groups + g) * taps * plane + i * out_w  # tap 0 of output row i
            scratch_row = start + (i - i0) * sh * wide * lane_count
            if out_w < POSITIONS:  # too narrow for a block: one position at a time
                for j in range(out_w):
                    a0 = multiply_add_taps_one(kernel_flat, kernel_row + j, plane, scratch,
                                               scratch_row + j * sw * lane_count, kernel_h, kernel_w,
                                               dh * wide * lane_count, dw * lane_count, lanes)
                    for l in range(valid):
                        out_flat[numba.uint64((c0 + l) * plane + i * out_w + j)] = simd.lane(a0, l)
                continue
            for j in range(0, out_w, POSITIONS):
                # a row's last block ends at out_w, overlapping the one before (same values, stored twice)
                j = min(j, out_w - POSITIONS)
                a0, a1, a2, a3 = multiply_add_taps_four(
                    kernel_flat, kernel_row + j, plane, scratch, scratch_row + j * sw * lane_count,
                    sw * lane_count, kernel_h, kernel_w, dh * wide * lane_count, dw * lane_count, lanes)
                target = c0 * plane + i * out_w + j
                for l in range(valid):
                    out_flat[numba.uint64(target + l * plane)] = simd.lane(a0, l)
                    out_flat[numba.uint64(target + l * plane + 1)] = simd.lane(a1, l)
                    out_flat[numba.uint64(target + l * plane + 2)] = simd.lane(a2, l)
                    out_flat[numba.uint64(target + l * plane + 3)] = simd.lane(a3, l)


def lanes_v5(group_channels: int, dtype) -> int:
    """Channels per vector: the group's channels rounded up to a 32-byte register, at most 64 bytes."""
    per_register = 32 // np.dtype(dtype).itemsize
    return per_register if group_channels <= per_register else 2 * per_register


def band_v5(batch, groups, group_channels, lanes, out_h, wide, kernel_h, sh, dh, workers) -> int:
    """Output rows per unit: about UNITS_PER_THREAD units per thread, scratch within SCRATCH_ELEMENTS."""
    blocks = (group_channels + lanes - 1) // lanes
    by_memory = max(1, (SCRATCH_ELEMENTS // (wide * lanes) - (kernel_h - 1) * dh - 1) // sh + 1)
    bands_wanted = -(-UNITS_PER_THREAD * workers // (batch * groups * blocks))
    return max(1, min(by_memory, -(-out_h // bands_wanted)))


def scratch_fits_v5(geometry) -> bool:
    """Whether a one-row band's channels-last scratch holds at most 4x the input values that row's taps read (huge
    strides or dilations skip most of the padded input, which v5 would copy): v5 to v7 may run on ``geometry``."""
    (_, sw), (dh, dw) = geometry.stride, geometry.dilation
    rows_in, wide = (geometry.kernel_h - 1) * dh + 1, (geometry.out_w - 1) * sw + (geometry.kernel_w - 1) * dw + 1
    return rows_in * wide <= 4 * geometry.kernel_h * geometry.kernel_w * geometry.out_w


def fits_v5(geometry) -> bool:
    """Whether v5 suits ``geometry`` (the version policy's test): its scratch fits (:func:`scratch_fits_v5`) and at
    least half of each float32 vector's lanes hold channels (float64 vectors have half as many lanes)."""
    return (2 * geometry.group_channels > lanes_v5(geometry.group_channels, np.float32)
            and scratch_fits_v5(geometry))


def forward_plan_v5(x, kernel, sh, sw, dh, dw):
    """``(workers, lanes, band)`` of the channel-vector forwards: numba's thread count, channels per vector
    (:func:`lanes_v5`) and output rows per unit (:func:`band_v5`)."""
    workers = numba.get_num_threads()
    batch, channels = x.shape[:2]
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    lanes = lanes_v5(channels // groups, x.dtype)
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    return workers, lanes, band_v5(batch, groups, channels // groups, lanes, out_h, wide, kernel_h, sh, dh, workers)


def forward_v5(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Channel vectors: per (b, g, channel block, band), a channels-last input copy, then each output position's
    channels accumulate in one register, POSITIONS positions at a time."""
    workers, lanes, band = forward_plan_v5(x, kernel, sh, sw, dh, dw)
    with UnitChunks():  # units one at a time to whichever thread is free
        forward_channels_v5(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band)


grad_x_v5, grad_kernel_v5 = grad_x_v3, grad_kernel_v3  # v5 changes only the forward (so far)


# ------------------------------------------------------ v6: v5 with its layout changes shuffled in registers
# v5 moves every value between the channels-first arrays and its channels-last scratch one scalar at a time: an
# extract and a store per output value, a load and a store per input value, as many instructions as its
# multiply-adds on 7x7 taps (more on 3x3 and stride 2). v6 moves four columns of ``lanes`` channels at once:
# ``simd.load_columns`` reads 4 consecutive input columns of each channel and shuffles them into 4 channel
# vectors, ``simd.store_columns`` shuffles 4 positions' channel vectors back into runs of 4 outputs per channel.
# Rows narrower than 4 columns fall back to v5's scalar copy. Same arithmetic, so results are bitwise v5's.


@inline
def load_channels_last_v6(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw):
    """``load_channels_last`` four columns at a time, transposed in registers."""
    lane_count = simd.count(lanes)
    inside_lo = min(pw, wide)
    if max(inside_lo, min(wide, width + pw)) - inside_lo < 4:
        load_channels_last(x_flat, scratch, start, c0, valid, lane_count, height, width, y0, rows, wide, pw)
        return
    load_channels_last_blocks(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw, False)


@inline
def load_channels_last_blocks(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw,
                              whole_vectors):
    """``load_channels_last`` on rows of at least 4 (``whole_vectors``: ``lanes``) inside columns: four columns at
    a time (``simd.load_columns``), or ``lanes`` at a time (``simd.copy_transposed``), transposed in registers."""
    lane_count = simd.count(lanes)
    row_length = wide * lane_count
    inside_lo = min(pw, wide)
    inside_hi = max(inside_lo, min(wide, width + pw))
    for r in range(rows):
        y = y0 + r
        row_start = start + r * row_length
        if y < 0 or y >= height:
            scratch[row_start:row_start + row_length] = 0
            continue
        scratch[row_start:row_start + inside_lo * lane_count] = 0
        scratch[row_start + inside_hi * lane_count:row_start + row_length] = 0
        source = (c0 * height + y) * width - pw
        if whole_vectors:
            for q in range(inside_lo, inside_hi, lane_count):
                q = min(q, inside_hi - lane_count)  # the last block ends at the row's end, overlapping (same values)
                simd.copy_transposed(x_flat, source + q, height * width, valid, scratch, row_start + q * lane_count,
                                     lanes)
            continue
        for q in range(inside_lo, inside_hi, 4):
            q = min(q, inside_hi - 4)  # the last four end at the row's end, overlapping (same values)
            p0, p1, p2, p3 = simd.load_columns(x_flat, source + q, height * width, valid, lanes)
            target = row_start + q * lane_count
            simd.store(scratch, target, p0)
            simd.store(scratch, target + lane_count, p1)
            simd.store(scratch, target + 2 * lane_count, p2)
            simd.store(scratch, target + 3 * lane_count, p3)


@inline
def forward_row_v6(kernel_flat, kernel_row, plane, scratch, scratch_row, out_flat, target_row, valid, out_w,
                   kernel_h, kernel_w, sw, row_step, dw, lanes):
    """One output row of a channel block: POSITIONS positions at a time (``multiply_add_taps_four``, stored by
    ``simd.store_columns``), or one at a time on rows narrower than a block; ``row_step`` is the scratch's
    elements per dilated kernel row, ``target_row`` the flat output index of the block's first channel."""
    lane_count = simd.count(lanes)
    if out_w < POSITIONS:
        for j in range(out_w):
            a0 = multiply_add_taps_one(kernel_flat, kernel_row + j, plane, scratch, scratch_row + j * sw * lane_count,
                                       kernel_h, kernel_w, row_step, dw * lane_count, lanes)
            for l in range(valid):
                out_flat[numba.uint64(target_row + l * plane + j)] = simd.lane(a0, l)
        return
    for j in range(0, out_w, POSITIONS):
        j = min(j, out_w - POSITIONS)
        a0, a1, a2, a3 = multiply_add_taps_four(kernel_flat, kernel_row + j, plane, scratch,
                                                scratch_row + j * sw * lane_count, sw * lane_count, kernel_h,
                                                kernel_w, row_step, dw * lane_count, lanes)
        simd.store_columns(out_flat, target_row + j, plane, valid, a0, a1, a2, a3)


@jit
def forward_channels_v6(x, kernel, out, sh, sw, ph, pw, dh, dw, threads, lanes, band):
    """``forward_channels_v5`` with ``load_channels_last_v6`` and ``simd.store_columns``."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    slot = ((band - 1) * sh + (kernel_h - 1) * dh + 1) * wide * lane_count
    plane, taps = out_h * out_w, kernel_h * kernel_w
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    scratch = np.empty(threads * slot, x.dtype)
    units = batch * groups * blocks * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        b, g, i0, rows, c0, valid = channel_block_unit(unit, groups, blocks, bands, band, out_h, channels,
                                                       group_channels, lane_count)
        load_channels_last_v6(x_flat, scratch, start, c0, valid, lanes, height, width, i0 * sh - ph,
                              (rows - 1) * sh + (kernel_h - 1) * dh + 1, wide, pw)
        for i in range(i0, i0 + rows):
            forward_row_v6(kernel_flat, (b * groups + g) * taps * plane + i * out_w, plane, scratch,
                           start + (i - i0) * sh * wide * lane_count, out_flat, c0 * plane + i * out_w, valid,
                           out_w, kernel_h, kernel_w, sw, dh * wide * lane_count, dw, lanes)


def forward_v6(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Channel vectors with layout changes in registers: v5's plan, four columns per shuffle."""
    workers, lanes, band = forward_plan_v5(x, kernel, sh, sw, dh, dw)
    with UnitChunks():
        forward_channels_v6(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band)


grad_x_v6, grad_kernel_v6 = grad_x_v3, grad_kernel_v3


# ------------------------------------------------ v7: the kernel gradient with channel vectors, v6's forward
# grad_kernel[b, g, u, v, i, j] = sum_c grad_out[c, i, j] * x_pad[c, i*sh + u*dh, j*sw + v*dw] is a sum over the
# group's channels: with channels in vector lanes it is one vector multiply per (tap, position) and one horizontal
# sum. v7 copies, per (b, g, band), the band's padded input (as v6) and its grad_out rows channels-last, then for
# four consecutive positions of a row and each tap multiplies the positions' grad_out vectors (held in registers
# across the taps when the group fits one vector) by their input vectors, adding channel blocks, and reduces the
# four products at once (``simd.store_sums``: shuffles across the four vectors, 4 consecutive results stored).
# The channel sum is a tree, not v3's sequence: results differ from v3's by rounding.


@jit
def grad_kernel_channels_v7(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, threads, lanes, band):
    """``grad_kernel_v7`` for ``lanes`` (a ``simd.Lanes``) and ``band`` output rows per unit; ``threads`` must be
    ``numba.get_num_threads()``."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    input_slot = ((band - 1) * sh + (kernel_h - 1) * dh + 1) * wide * lane_count  # per channel block
    output_slot = band * out_w * lane_count
    slot = blocks * (input_slot + output_slot)
    plane, taps = out_h * out_w, kernel_h * kernel_w
    x_flat, grad_out_flat, grad_kernel_flat = x.reshape(-1), grad_out.reshape(-1), grad_kernel.reshape(-1)
    scratch = np.empty(threads * slot, x.dtype)
    units = batch * groups * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        outputs = start + blocks * input_slot  # the grad_out copies follow the input copies
        b, g, i0, rows = band_of_unit(unit, groups, bands, band, out_h)
        for block in range(blocks):
            c0 = b * channels + g * group_channels + block * lane_count
            valid = min(lane_count, group_channels - block * lane_count)
            load_channels_last_v6(x_flat, scratch, start + block * input_slot, c0, valid, lanes, height, width,
                                  i0 * sh - ph, (rows - 1) * sh + (kernel_h - 1) * dh + 1, wide, pw)
            load_channels_last_v6(grad_out_flat, scratch, outputs + block * output_slot, c0, valid, lanes, out_h,
                                  out_w, i0, rows, out_w, 0)
        target_image = (b * groups + g) * taps * plane
        for i in range(i0, i0 + rows):
            if out_w < POSITIONS:  # too narrow for a block: one position at a time, lanes summed one by one
                for j in range(out_w):
                    for tap in range(taps):
                        shift = (tap // kernel_w * dh * wide + tap % kernel_w * dw) * lane_count
                        product = simd.zeros(scratch, lanes)
                        for block in range(blocks):
                            product = simd.multiply_add(
                                simd.load(scratch, outputs + block * output_slot + ((i - i0) * out_w + j) * lane_count,
                                          lanes),
                                simd.load(scratch, start + block * input_slot + shift
                                          + ((i - i0) * sh * wide + j * sw) * lane_count, lanes), product)
                        total = simd.lane(product, 0)
                        for l in range(1, lane_count):
                            total += simd.lane(product, l)
                        grad_kernel_flat[numba.uint64(target_image + tap * plane + i * out_w + j)] = total
                continue
            for j in range(0, out_w, POSITIONS):
                j = min(j, out_w - POSITIONS)  # the row's last block ends at out_w (overlap: same values)
                output_base = outputs + ((i - i0) * out_w + j) * lane_count
                input_base = start + ((i - i0) * sh * wide + j * sw) * lane_count
                for u in range(kernel_h):
                    for v in range(kernel_w):
                        x0 = input_base + (u * dh * wide + v * dw) * lane_count
                        a0 = a1 = a2 = a3 = simd.zeros(scratch, lanes)
                        for block in range(blocks):
                            o = output_base + block * output_slot
                            s = x0 + block * input_slot
                            a0 = simd.multiply_add(simd.load(scratch, o, lanes), simd.load(scratch, s, lanes), a0)
                            a1 = simd.multiply_add(simd.load(scratch, o + lane_count, lanes),
                                                   simd.load(scratch, s + sw * lane_count, lanes), a1)
                            a2 = simd.multiply_add(simd.load(scratch, o + 2 * lane_count, lanes),
                                                   simd.load(scratch, s + 2 * sw * lane_count, lanes), a2)
                            a3 = simd.multiply_add(simd.load(scratch, o + 3 * lane_count, lanes),
                                                   simd.load(scratch, s + 3 * sw * lane_count, lanes), a3)
                        simd.store_sums(grad_kernel_flat, target_image + (u * kernel_w + v) * plane + i * out_w + j,
                                        a0, a1, a2, a3)


def grad_kernel_v7(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Channel vectors for the kernel gradient: per (b, g, band), channels-last copies of the input and grad_out
    bands, then per tap four positions' channel products reduced together."""
    workers = numba.get_num_threads()
    batch, channels = x.shape[:2]
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    lanes = lanes_v5(channels // groups, x.dtype)
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    band = band_v5(batch, groups, lanes, lanes, out_h, wide + out_w, kernel_h, sh, dh, workers)  # one block's share
    with UnitChunks():
        grad_kernel_channels_v7(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, numba.get_num_threads(),
                                simd.Lanes(lanes), band)


forward_v7, grad_x_v7 = forward_v6, grad_x_v3


# ------------------------------- v8: forward, eight positions per block, input columns reused across a row's taps
# v6 loads an input vector for every multiply-add (plus the kernel value's broadcast): two loads per FMA, and four
# accumulators leave most of AVX-512's 32 registers idle. v8 accumulates eight consecutive positions of a row and,
# for stride 1 and dilation 1 along the row, slides a window of input vectors along the kernel row: position p at
# tap v reads column j + p + v, which position p - 1 reads at tap v + 1, so each tap loads ONE new column and shifts
# the other seven (register renaming, no memory traffic): 8 + Kw - 1 input loads per kernel row instead of 8 * Kw.
# Stride 2 keeps two windows, even and odd columns (tap v + 2 of position p reads what tap v of p + 1 read). Rows
# of 5 to 7 outputs run as one block whose missing positions read a valid kernel value (clamped) and a few columns
# past the row (the scratch slot has a tail for them) and are never stored. Other strides and dilations, and rows
# narrower than 5, run v6's four-position code. The channels-last copy moves ``lanes`` columns at a time
# (``simd.copy_transposed``: a lanes x lanes transpose in registers) where rows are that wide, v6's four otherwise
# (a few percent on the stride-2 layers). The kernel is read where it lies, Kh*Kw planes apart: more streams
# than the hardware prefetchers follow, so with the tap loop no longer bound by input loads, one thread spent much of
# its time waiting for kernel cache lines (64@56 K7 at batch 8: 1.8x faster with a prefetch); each tap of a block
# prefetches its kernel values PREFETCH_AHEAD_V8 elements (four blocks) ahead (``simd.prefetch``). Each output still
# sums u, then v, from zero with fmuladd: results are bitwise v6's (tested).
POSITIONS_V8 = 8  # output positions per block: 8 accumulators + 8 (stride 2: 16) window vectors, in 32 registers
NARROWEST_V8 = 5  # narrower rows waste more than they save in a block of 8: v6's blocks of 4 run there
PREFETCH_AHEAD_V8 = 4 * POSITIONS_V8  # kernel elements ahead of a tap's block, prefetched (best of 32, 64, 128)


@inline
def multiply_add_tap_eight(kernel_flat, k, o5, o6, o7, lanes, w0, w1, w2, w3, w4, w5, w6, w7,
                           a0, a1, a2, a3, a4, a5, a6, a7):
    """One tap of a block: ``a_p += kernel_flat[k + o_p] * w_p`` with ``o_p = p`` for ``p < 5``."""
    a0 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k)], lanes), w0, a0)
    a1 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 1)], lanes), w1, a1)
    a2 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 2)], lanes), w2, a2)
    a3 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 3)], lanes), w3, a3)
    a4 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 4)], lanes), w4, a4)
    a5 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + o5)], lanes), w5, a5)
    a6 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + o6)], lanes), w6, a6)
    a7 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + o7)], lanes), w7, a7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@inline
def multiply_add_taps_eight(kernel_flat, kernel_start, last, plane, scratch, start, kernel_h, kernel_w, row_step,
                            sw, lanes):
    """Eight consecutive positions' channel vectors, ``sum_{u,v} kernel[kernel_start + (u*Kw + v)*plane + p] *
    scratch[start + u*row_step + (p*sw + v)*lanes : ... + lanes]`` for ``p <= last`` (``4 <= last <= 7``; positions
    past ``last`` hold garbage); stride ``sw`` 1 or 2, dilation 1 along the row."""
    step = simd.count(lanes)
    o5, o6, o7 = min(5, last), min(6, last), min(7, last)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros(scratch, lanes)
    for u in range(kernel_h):
        x = start + u * row_step
        k = kernel_start + u * kernel_w * plane
        if sw == 1:  # window w_p = column p + v
            w0, w1 = simd.load(scratch, x, lanes), simd.load(scratch, x + step, lanes)
            w2, w3 = simd.load(scratch, x + 2 * step, lanes), simd.load(scratch, x + 3 * step, lanes)
            w4, w5 = simd.load(scratch, x + 4 * step, lanes), simd.load(scratch, x + 5 * step, lanes)
            w6 = simd.load(scratch, x + 6 * step, lanes)
            for v in range(kernel_w):
                simd.prefetch(kernel_flat, k + v * plane + PREFETCH_AHEAD_V8)
                w7 = simd.load(scratch, x + (v + 7) * step, lanes)
                a0, a1, a2, a3, a4, a5, a6, a7 = multiply_add_tap_eight(
                    kernel_flat, k + v * plane, o5, o6, o7, lanes, w0, w1, w2, w3, w4, w5, w6, w7,
                    a0, a1, a2, a3, a4, a5, a6, a7)
                w0, w1, w2, w3, w4, w5, w6 = w1, w2, w3, w4, w5, w6, w7
        else:  # stride 2: even window e_p = column 2p + v (v even), odd window o_p = column 2p + v (v odd)
            e0, e1 = simd.load(scratch, x, lanes), simd.load(scratch, x + 2 * step, lanes)
            e2, e3 = simd.load(scratch, x + 4 * step, lanes), simd.load(scratch, x + 6 * step, lanes)
            e4, e5 = simd.load(scratch, x + 8 * step, lanes), simd.load(scratch, x + 10 * step, lanes)
            e6 = simd.load(scratch, x + 12 * step, lanes)
            d0, d1 = simd.load(scratch, x + step, lanes), simd.load(scratch, x + 3 * step, lanes)
            d2, d3 = simd.load(scratch, x + 5 * step, lanes), simd.load(scratch, x + 7 * step, lanes)
            d4, d5 = simd.load(scratch, x + 9 * step, lanes), simd.load(scratch, x + 11 * step, lanes)
            d6 = simd.load(scratch, x + 13 * step, lanes)
            for t in range((kernel_w + 1) // 2):
                simd.prefetch(kernel_flat, k + 2 * t * plane + PREFETCH_AHEAD_V8)
                simd.prefetch(kernel_flat, k + (2 * t + 1) * plane + PREFETCH_AHEAD_V8)  # tap Kw if Kw is odd: harmless
                e7 = simd.load(scratch, x + (14 + 2 * t) * step, lanes)
                a0, a1, a2, a3, a4, a5, a6, a7 = multiply_add_tap_eight(
                    kernel_flat, k + 2 * t * plane, o5, o6, o7, lanes, e0, e1, e2, e3, e4, e5, e6, e7,
                    a0, a1, a2, a3, a4, a5, a6, a7)
                e0, e1, e2, e3, e4, e5, e6 = e1, e2, e3, e4, e5, e6, e7
                if 2 * t + 1 < kernel_w:
                    d7 = simd.load(scratch, x + (15 + 2 * t) * step, lanes)
                    a0, a1, a2, a3, a4, a5, a6, a7 = multiply_add_tap_eight(
                        kernel_flat, k + (2 * t + 1) * plane, o5, o6, o7, lanes, d0, d1, d2, d3, d4, d5, d6, d7,
                        a0, a1, a2, a3, a4, a5, a6, a7)
                    d0, d1, d2, d3, d4, d5, d6 = d1, d2, d3, d4, d5, d6, d7
    return a0, a1, a2, a3, a4, a5, a6, a7


@inline
def load_channels_last_v8(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw):
    """``load_channels_last`` ``lanes`` columns at a time (``simd.copy_transposed``); rows of fewer inside columns
    run ``load_channels_last_v6``."""
    inside_lo = min(pw, wide)
    if max(inside_lo, min(wide, width + pw)) - inside_lo < simd.count(lanes):
        load_channels_last_v6(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw)
        return
    load_channels_last_blocks(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw, True)


def slot_tail_v8(out_w, sw, dw, lanes) -> int:
    """Scratch elements past a v8 band that a block of 5 to 7 positions reads (its missing positions' columns)."""
    if dw != 1 or sw > 2 or out_w < NARROWEST_V8 or out_w >= POSITIONS_V8:
        return 0
    return (POSITIONS_V8 - out_w) * sw * lanes


@jit
def forward_channels_v8(x, kernel, out, sh, sw, ph, pw, dh, dw, threads, lanes, band, tail):
    """``forward_channels_v6`` with blocks of eight positions where the row allows (``multiply_add_taps_eight``);
    ``tail`` is :func:`slot_tail_v8`."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    slot = ((band - 1) * sh + (kernel_h - 1) * dh + 1) * wide * lane_count + tail
    plane, taps = out_h * out_w, kernel_h * kernel_w
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    scratch = np.empty(threads * slot, x.dtype)
    eights = dw == 1 and sw <= 2 and out_w >= NARROWEST_V8
    last = min(out_w, POSITIONS_V8) - 1  # the last live position of a block
    units = batch * groups * blocks * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        b, g, i0, rows, c0, valid = channel_block_unit(unit, groups, blocks, bands, band, out_h, channels,
                                                       group_channels, lane_count)
        load_channels_last_v8(x_flat, scratch, start, c0, valid, lanes, height, width, i0 * sh - ph,
                              (rows - 1) * sh + (kernel_h - 1) * dh + 1, wide, pw)
        for i in range(i0, i0 + rows):
            kernel_row = (b * groups + g) * taps * plane + i * out_w
            scratch_row = start + (i - i0) * sh * wide * lane_count
            target_row = c0 * plane + i * out_w
            if eights:
                for j in range(0, out_w, POSITIONS_V8):
                    j = max(0, min(j, out_w - POSITIONS_V8))  # the row's last block ends at out_w (overlap)
                    a0, a1, a2, a3, a4, a5, a6, a7 = multiply_add_taps_eight(
                        kernel_flat, kernel_row + j, last, plane, scratch, scratch_row + j * sw * lane_count,
                        kernel_h, kernel_w, dh * wide * lane_count, sw, lanes)
                    simd.store_columns(out_flat, target_row + j, plane, valid, a0, a1, a2, a3)
                    if last == 7:  # positions last - 3 .. last (overlapping the first four where last < 7)
                        simd.store_columns(out_flat, target_row + j + 4, plane, valid, a4, a5, a6, a7)
                    elif last == 6:
                        simd.store_columns(out_flat, target_row + j + 3, plane, valid, a3, a4, a5, a6)
                    elif last == 5:
                        simd.store_columns(out_flat, target_row + j + 2, plane, valid, a2, a3, a4, a5)
                    else:
                        simd.store_columns(out_flat, target_row + j + 1, plane, valid, a1, a2, a3, a4)
            else:
                forward_row_v6(kernel_flat, kernel_row, plane, scratch, scratch_row, out_flat, target_row, valid,
                               out_w, kernel_h, kernel_w, sw, dh * wide * lane_count, dw, lanes)


def forward_v8(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Channel vectors, eight positions per block, input columns reused across a kernel row's taps."""
    workers, lanes, band = forward_plan_v5(x, kernel, sh, sw, dh, dw)
    with UnitChunks():
        forward_channels_v8(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band,
                            slot_tail_v8(kernel.shape[-1], sw, dw, lanes))


# ------------------------------------------------------- v8 (continued): the input gradient with channel vectors
# grad_x[c, y, x] = sum of kernel[u, v, i, j] * grad_out[c, i, j] over the taps with y + ph - u*dh = i*sh and
# x + pw - v*dw = j*sw, (i, j) inside the output: v6's forward mirrored. Per (b, g, block of lanes channels, band of
# input rows), v8 copies the grad_out rows the band's taps read channels-last, S[r, j, l] = grad_out[c0 + l, i0 + r, j].
# An input row's taps are those u with u*dh = y + ph (mod sh), and their output rows i step down by
# lcm(sh, dh) // sh; input columns are taken by stride phase, x = xs + sw*m, whose taps v*dw = xs + pw (mod sw) read
# j = m + shift(v): four consecutive m read four consecutive j, so four positions' channel vectors accumulate in
# registers, each tap one kernel value (read where it lies, four consecutive) broadcast against one vector load.
# Taps whose output row is outside the output are skipped per row; a block of positions all of whose taps read
# inside the output runs unchecked, a block at the border checks per tap and adds only the positions whose j is
# inside (the definition has no term for the others: no 0 * inf). Stride 1 stores four positions per shuffle
# (``simd.store_columns``); wider strides collect an input row channels-last, then store it four columns at a time.
# Each element sums its taps in (u, v) order, like v1, and is written by the unit owning its row.
import math  # noqa: E402


def band_v8(batch, groups, group_channels, lanes, height, width, out_h, out_w, kernel_h, sh, dh, workers):
    """``(band, slot)``: input rows per unit (about UNITS_PER_THREAD units per thread, the grad_out rows they read
    within SCRATCH_ELEMENTS) and the per-thread scratch length: those grad_out rows channels-last, one input row."""
    blocks = (group_channels + lanes - 1) // lanes
    rows_fit = max(1, SCRATCH_ELEMENTS // (out_w * lanes))
    by_memory = height if out_h <= rows_fit else max(1, rows_fit * sh - (kernel_h - 1) * dh)
    bands_wanted = -(-UNITS_PER_THREAD * workers // (batch * groups * blocks))
    band = max(1, min(by_memory, -(-height // bands_wanted)))
    grad_out_rows = min(out_h, (band - 1 + (kernel_h - 1) * dh) // sh + 1)
    return band, (grad_out_rows * out_w + width) * lanes


@inline
def tap_progression(position, padding, dilation, stride, taps, step):
    """``(first, count, output_first)``: the taps ``t = first + k*step``, ``k < count``, with ``t*dilation`` equal to
    ``position + padding`` modulo ``stride`` (``step = stride // gcd(stride, dilation)``), and the output index
    ``(position + padding - first*dilation) // stride`` of the first (each next one is ``step*dilation // stride``
    lower)."""
    first = taps
    for tap in range(min(step, taps)):
        if (position + padding - tap * dilation) % stride == 0:
            first = tap
            break
    count = (taps - first + step - 1) // step
    return first, count, (position + padding - first * dilation) // stride


@inline
def gather_taps_four(kernel_flat, scratch, k0, s0, row_k, row_s, column_k, column_s, rows_lo, rows_hi, columns,
                     lanes):
    """Four consecutive positions' channel vectors: ``sum kernel[k + p] * scratch[s + p*lane_step : ... + lanes]``
    over the taps ``k = k0 + r*row_k + n*column_k``, ``s = s0 + r*row_s + n*column_s``, ``rows_lo <= r < rows_hi``,
    ``n < columns``, for ``p < 4``: every tap inside the output."""
    lane_step = simd.count(lanes)  # a constant here (a parfor passes the caller's as a variable): immediate offsets
    a0 = a1 = a2 = a3 = simd.zeros(scratch, lanes)
    for r in range(rows_lo, rows_hi):
        for n in range(columns):
            k = k0 + r * row_k + n * column_k
            s = s0 + r * row_s + n * column_s
            a0, a1, a2, a3 = multiply_add_four(kernel_flat, k, scratch, s, lane_step, lanes, a0, a1, a2, a3)
    return a0, a1, a2, a3


@inline
def gather_taps_four_sliding(kernel_flat, scratch, k0, s0, row_k, row_s, column_k, rows_lo, rows_hi, columns, lanes):
    """``gather_taps_four`` for taps one output column apart (``column_s = -lanes``): position ``p`` of tap ``n``
    reads the vector position ``p - 1`` read at tap ``n - 1``, so each tap loads one new vector and passes the others
    on in registers (one vector load per four multiply-adds instead of four)."""
    lane_step = simd.count(lanes)
    a0 = a1 = a2 = a3 = simd.zeros(scratch, lanes)
    for r in range(rows_lo, rows_hi):
        s = s0 + r * row_s
        k = k0 + r * row_k
        g1 = simd.load(scratch, s + lane_step, lanes)
        g2 = simd.load(scratch, s + 2 * lane_step, lanes)
        g3 = simd.load(scratch, s + 3 * lane_step, lanes)
        for n in range(columns):
            g0 = simd.load(scratch, s - n * lane_step, lanes)
            a0 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k)], lanes), g0, a0)
            a1 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 1)], lanes), g1, a1)
            a2 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 2)], lanes), g2, a2)
            a3 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 3)], lanes), g3, a3)
            g1, g2, g3 = g0, g1, g2
            k += column_k
    return a0, a1, a2, a3


@inline
def gather_taps_four_border(kernel_flat, scratch, k0, s0, row_k, row_s, column_k, column_s, rows_lo, rows_hi, columns,
                            lanes, j0, j_step, out_w):
    """``gather_taps_four`` where tap ``n`` reads output columns ``j0 - n*j_step + p``, some outside the output:
    a tap with all four inside runs unchecked, the others add only their positions inside."""
    lane_step = simd.count(lanes)
    a0 = a1 = a2 = a3 = simd.zeros(scratch, lanes)
    for r in range(rows_lo, rows_hi):
        for n in range(columns):
            j = j0 - n * j_step
            k = k0 + r * row_k + n * column_k
            s = s0 + r * row_s + n * column_s
            if j >= 0 and j + 3 < out_w:
                a0, a1, a2, a3 = multiply_add_four(kernel_flat, k, scratch, s, lane_step, lanes, a0, a1, a2, a3)
                continue
            if 0 <= j < out_w:
                a0 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k)], lanes), simd.load(scratch, s, lanes),
                                       a0)
            if 0 <= j + 1 < out_w:
                a1 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 1)], lanes),
                                       simd.load(scratch, s + lane_step, lanes), a1)
            if 0 <= j + 2 < out_w:
                a2 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 2)], lanes),
                                       simd.load(scratch, s + 2 * lane_step, lanes), a2)
            if 0 <= j + 3 < out_w:
                a3 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k + 3)], lanes),
                                       simd.load(scratch, s + 3 * lane_step, lanes), a3)
    return a0, a1, a2, a3


@inline
def gather_taps_one(kernel_flat, scratch, k0, s0, row_k, row_s, column_k, column_s, rows_lo, rows_hi, columns,
                    lanes, j0, j_step, out_w):
    """``gather_taps_four_border`` for one position (phases narrower than a block): taps outside are skipped."""
    a0 = simd.zeros(scratch, lanes)
    for r in range(rows_lo, rows_hi):
        for n in range(columns):
            j = j0 - n * j_step
            if 0 <= j < out_w:
                a0 = simd.multiply_add(simd.splat(kernel_flat[numba.uint64(k0 + r * row_k + n * column_k)], lanes),
                                       simd.load(scratch, s0 + r * row_s + n * column_s, lanes), a0)
    return a0


@inline
def prefetch_kernel_rows(kernel_flat, start, row_step, rows_lo, rows_hi, kernel_w, plane, out_w):
    """Prefetch the kernel rows ``kernel_flat[start + r*row_step + v*plane : ... + out_w]``, ``rows_lo <= r < rows_hi``,
    ``v < kernel_w``, one cache line at a time."""
    line = 64 // kernel_flat.itemsize
    for r in range(rows_lo, rows_hi):
        for v in range(kernel_w):
            first = start + r * row_step + v * plane
            for offset in range(0, out_w + line - 1, line):
                simd.prefetch(kernel_flat, first + min(offset, out_w - 1))


@jit
def grad_x_channels_v8(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, threads, lanes, band, slot, u_step, v_step):
    """``grad_x_v8`` for ``lanes`` (a ``simd.Lanes``), ``band`` input rows per unit, ``slot`` scratch elements per
    thread (``band_v8``), tap steps ``u_step = sh // gcd(sh, dh)``, ``v_step = sw // gcd(sw, dw)``; ``threads`` must
    be ``numba.get_num_threads()``."""
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (height + band - 1) // band
    plane, taps, image_plane = out_h * out_w, kernel_h * kernel_w, height * width
    i_step, j_step = u_step * dh // sh, v_step * dw // sw  # output rows (columns) between successive taps
    row_k, column_k = u_step * kernel_w * plane - i_step * out_w, v_step * plane - j_step
    row_s, column_s = -i_step * out_w * lane_count, -j_step * lane_count
    grad_out_flat, kernel_flat, grad_x_flat = grad_out.reshape(-1), kernel.reshape(-1), grad_x.reshape(-1)
    scratch = np.empty(threads * slot, grad_x.dtype)
    direct = sw == 1 and width >= POSITIONS  # four consecutive positions: store them straight to grad_x
    # the tap progressions of each input row and of each column phase, computed once (integer divisions are slow)
    row_plan = np.empty((height, 4), np.int64)  # first tap row, taps [lo, hi) whose output row is inside, its row
    for y in range(height):
        u_first, u_count, i_first = tap_progression(y, ph, dh, sh, kernel_h, u_step)
        row_plan[y, 0], row_plan[y, 3] = u_first, i_first
        row_plan[y, 1] = 0 if i_first < out_h else (i_first - out_h) // i_step + 1
        row_plan[y, 2] = min(u_count, i_first // i_step + 1) if i_first >= 0 else 0
    phase_plan = np.empty((min(sw, width), 4), np.int64)  # positions, first tap column, tap columns, its column
    for xs in range(min(sw, width)):
        v_first, v_count, j_first = tap_progression(xs, pw, dw, sw, kernel_w, v_step)
        phase_plan[xs, 0], phase_plan[xs, 1], phase_plan[xs, 2] = (width - 1 - xs) // sw + 1, v_first, v_count
        phase_plan[xs, 3] = j_first
    units = batch * groups * blocks * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        row_scratch = start + slot - width * lane_count  # one input row, channels-last (strides > 1)
        b, g, y0, rows, c0, valid = channel_block_unit(unit, groups, blocks, bands, band, height, channels,
                                                       group_channels, lane_count)
        i_lo = max(0, -(-(y0 + ph - (kernel_h - 1) * dh) // sh))  # the grad_out rows the band's taps read
        i_hi = min(out_h - 1, (y0 + rows - 1 + ph) // sh)
        if i_hi >= i_lo:
            load_channels_last_v6(grad_out_flat, scratch, start, c0, valid, lanes, out_h, out_w, i_lo, i_hi - i_lo + 1,
                                  out_w, 0)
        kernel_image = (b * groups + g) * taps * plane
        for y in range(y0, y0 + rows):
            u_first, rows_lo, rows_hi, i_first = row_plan[y, 0], row_plan[y, 1], row_plan[y, 2], row_plan[y, 3]
            if y + 1 < y0 + rows:  # the next row's kernel rows, one plane per tap: too many streams for the hardware
                prefetch_kernel_rows(kernel_flat, kernel_image + row_plan[y + 1, 0] * kernel_w * plane
                                     + row_plan[y + 1, 3] * out_w, u_step * kernel_w * plane - i_step * out_w,
                                     row_plan[y + 1, 1], row_plan[y + 1, 2], kernel_w, plane, out_w)
            for xs in range(min(sw, width)):  # positions x = xs + m*sw, m < count
                count, v_first, v_count, j_first = phase_plan[xs, 0], phase_plan[xs, 1], phase_plan[xs, 2], \
                    phase_plan[xs, 3]
                k_row = kernel_image + (u_first * kernel_w + v_first) * plane + i_first * out_w + j_first
                s_row = start + ((i_first - i_lo) * out_w + j_first) * lane_count
                if count < POSITIONS:
                    for m in range(count):
                        a0 = gather_taps_one(kernel_flat, scratch, k_row + m, s_row + m * lane_count, row_k, row_s,
                                             column_k, column_s, rows_lo, rows_hi, v_count, lanes, m + j_first, j_step,
                                             out_w)
                        simd.store(scratch, row_scratch + (xs + m * sw) * lane_count, a0)
                    continue
                for m in range(0, count, POSITIONS):
                    m = min(m, count - POSITIONS)  # the last block ends at the row's end (overlap: same values)
                    j = m + j_first  # output column of tap column 0, position 0
                    if j_step == 1 and j - (v_count - 1) >= 0 and j + POSITIONS - 1 < out_w:
                        a0, a1, a2, a3 = gather_taps_four_sliding(kernel_flat, scratch, k_row + m,
                                                                  s_row + m * lane_count, row_k, row_s, column_k,
                                                                  rows_lo, rows_hi, v_count, lanes)
                    elif j - (v_count - 1) * j_step >= 0 and j + POSITIONS - 1 < out_w:
                        a0, a1, a2, a3 = gather_taps_four(kernel_flat, scratch, k_row + m, s_row + m * lane_count,
                                                          row_k, row_s, column_k, column_s, rows_lo, rows_hi, v_count,
                                                          lanes)
                    else:
                        a0, a1, a2, a3 = gather_taps_four_border(
                            kernel_flat, scratch, k_row + m, s_row + m * lane_count, row_k, row_s, column_k, column_s,
                            rows_lo, rows_hi, v_count, lanes, j, j_step, out_w)
                    if direct:
                        simd.store_columns(grad_x_flat, c0 * image_plane + y * width + m, image_plane, valid,
                                           a0, a1, a2, a3)
                    else:
                        target = row_scratch + (xs + m * sw) * lane_count
                        simd.store(scratch, target, a0)
                        simd.store(scratch, target + sw * lane_count, a1)
                        simd.store(scratch, target + 2 * sw * lane_count, a2)
                        simd.store(scratch, target + 3 * sw * lane_count, a3)
            if direct:
                continue
            row_target = c0 * image_plane + y * width
            if width < POSITIONS:
                for x in range(width):
                    a0 = simd.load(scratch, row_scratch + x * lane_count, lanes)
                    for l in range(valid):
                        grad_x_flat[numba.uint64(row_target + l * image_plane + x)] = simd.lane(a0, l)
                continue
            for x in range(0, width, POSITIONS):
                x = min(x, width - POSITIONS)
                source = row_scratch + x * lane_count
                simd.store_columns(grad_x_flat, row_target + x, image_plane, valid,
                                   simd.load(scratch, source, lanes), simd.load(scratch, source + lane_count, lanes),
                                   simd.load(scratch, source + 2 * lane_count, lanes),
                                   simd.load(scratch, source + 3 * lane_count, lanes))


def grad_x_v8(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):
    """Channel vectors for the input gradient: per (b, g, channel block, band of input rows), a channels-last copy
    of the grad_out rows the band reads, then per input row and column phase four positions' taps in registers."""
    workers = numba.get_num_threads()
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, _, out_h, out_w = kernel.shape[1:]
    lanes = lanes_v5(channels // groups, grad_x.dtype)
    band, slot = band_v8(batch, groups, channels // groups, lanes, height, width, out_h, out_w, kernel_h, sh, dh,
                         workers)
    with UnitChunks():
        grad_x_channels_v8(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band, slot,
                           sh // math.gcd(sh, dh), sw // math.gcd(sw, dw))


grad_kernel_v8 = grad_kernel_v7  # v8 changes the forward and the input gradient


# ------------------------------------------------- v9: the kernel gradient with output positions in vector lanes
# grad_kernel[b, g, u, v, i, j] = sum_c grad_out[c, i, j] * x_pad[c, i*sh + u*dh, j*sw + v*dw]. v7 puts the group's
# channels in lanes: per tap and four positions, 4 vector loads, 4 multiply-adds and a 4-vector horizontal sum. v9
# puts ``lanes`` consecutive output positions of a row in a vector instead, so that nothing is summed across lanes:
# grad_out[c, i, j:j + lanes] is one vector per channel, and the input it meets at tap (u, v) is x_pad[c, i*sh + u*dh,
# (j + l)*sw + v*dw] for lanes l, contiguous once the input row is split by column phase, P[c, r, rv, q] =
# x_pad[c, y0 + r, q*sw + rv] (v3's phases, but only the phases rv = v*dw mod sw that some tap column reads, so
# stride 1 is a plain padded row copy). Per (b, g, band of output rows), one pass copies the band's input rows so
# and its grad_out rows (zero-padded to a whole vector where a row is narrower), 64 bytes at a time: masked loads
# zero the padding (``simd.load_range``), stride 2 is split by shuffles (``simd.even_odd``). Then per row and vector
# of positions, the channel loop multiplies one grad_out vector by several input vectors into as many accumulators
# (independent chains): one load per multiply-add, no shuffles, and each tap's results are stored as one contiguous
# vector (``simd.store_first`` where a row is narrower than a vector). Taps go in blocks of TAPS_V9, flat over (u, v)
# (3x3: one block and a tail of TAIL_TAPS_V9), except with stride and dilation 1 down the columns and kernels of at
# least PAIRED_MIN_KH_V9 rows: there two consecutive output rows and COLUMN_TAPS_V9 kernel rows of one tap column
# accumulate together, and the lower row's kernel row u reads the input row of the upper row's u + 1, so 7 loads
# feed 8 multiply-adds (in throwaway A/B variants: faster on RedNet's 7x7 stride-1 layers, no faster on 3x3 or on
# stride 2, which shares fewer rows; those run the flat blocks). Both kinds of block compute a few repeated or spare
# taps (and an odd band's spare row) that are not stored; the copies include the rows they read. The channel loop
# reads each channel's offset from an array: computed in the loop, LLVM kept one induction variable per tap and
# spilled them (several times slower). Vectors hold
# 64 bytes where a row is that wide, else 32 (rows of 7 and 14 fill 7/8 of the lanes either way); a row's last vector
# ends at its end, overlapping the one before (same values). Each element sums its channels in order from zero with
# fused multiply-adds, written by one unit: bitwise reproducible for any thread count; the sum is a sequence, not v7's
# tree, so results differ from v7's by rounding. Measured with AVX-512 only (32 registers; the blocks use 10-12).
TAPS_V9 = 8  # taps accumulated together: 8 accumulators, one multiply-add chain each (the channel loop's length)
TAIL_TAPS_V9 = 4  # a tail of at most this many taps runs in a block of this many (fewer repeated multiply-adds)
COLUMN_TAPS_V9 = 4  # kernel rows of a tap column, two output rows: 8 accumulators (with 8 rows, 16 spilled)
PAIRED_MIN_KH_V9 = 7  # tried on 7 (faster) and 3 (no faster: the flat blocks run there)
NARROWEST_V9 = 7  # the narrowest output rows v9 was measured faster than v7 on (RedNet's 7x7)
FEWEST_TAPS_V9 = 10  # kernels with fewer taps run v9 at batch 1 only: RedNet's 3x3 layer at batch 8 (its 12.8 MB input
# from memory) measured no faster than v7 (0.90-1.59x over five runs, about 1 in three); at batch 1 1.3-1.8x


def lanes_v9(out_w: int, dtype) -> int:
    """Output positions per vector: a 64-byte vector where the output rows fill one, else 32 bytes."""
    per_register = 64 // np.dtype(dtype).itemsize
    return per_register if out_w >= per_register else per_register // 2


def phases_v9(kernel_w: int, sw: int, dw: int):
    """``(phases, column_slot, column_shift)``: the column phases ``v*dw mod sw`` the tap columns read, in order of
    first use (at most ``min(sw, Kw)``), and per tap column ``v`` its phase's index and ``v*dw // sw``."""
    phases, column_slot = [], []
    for v in range(kernel_w):
        phase = v * dw % sw
        if phase not in phases:
            phases.append(phase)
        column_slot.append(phases.index(phase))
    return tuple(phases), tuple(column_slot), tuple(v * dw // sw for v in range(kernel_w))


def paired_v9(kernel_h, sh, dh):
    """Whether v9 accumulates two output rows by tap columns (stride and dilation 1 down the columns, so that the rows
    share input rows; kernels at least PAIRED_MIN_KH_V9 tall), not by blocks of TAPS_V9 taps."""
    return dh == 1 and sh == 1 and kernel_h >= PAIRED_MIN_KH_V9


def rows_v9(rows, kernel_h, sh, dh):
    """``(input_rows, grad_out_rows)`` a unit of ``rows`` output rows copies: with paired rows, a spare output row
    (an odd band's last pair) and every row a column block of COLUMN_TAPS_V9 kernel rows reads."""
    if paired_v9(kernel_h, sh, dh):
        return rows * sh + -(-kernel_h // COLUMN_TAPS_V9) * COLUMN_TAPS_V9, rows + 1
    return (rows - 1) * sh + (kernel_h - 1) * dh + 1, rows


def layout_v9(group_channels, out_w, kernel_h, kernel_w, sh, sw, dh, dw, lanes, phase_count, band):
    """``(pitch, phase_w, input_channel, output_channel)`` of a ``band``-row unit: the padded grad_out row (a whole
    vector at least), a phase row (the taps' reach past it), a channel's input and grad_out elements in scratch."""
    pitch = max(out_w, lanes)
    phase_w = pitch + (kernel_w - 1) * dw // sw
    rows_in, rows_out = rows_v9(band, kernel_h, sh, dh)
    return pitch, phase_w, rows_in * phase_count * phase_w, rows_out * pitch


paired_v9, rows_v9, layout_v9 = inline(paired_v9), inline(rows_v9), inline(layout_v9)


def plan_v9(batch, groups, group_channels, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, dtype, workers):
    """``(lanes, band, slot)``: positions per vector (:func:`lanes_v9`), output rows per unit (about UNITS_PER_THREAD
    units per thread, the unit's copies within SCRATCH_ELEMENTS, at least one row) and scratch elements per thread."""
    lanes = lanes_v9(out_w, dtype)
    phase_count = len(phases_v9(kernel_w, sw, dw)[0])

    def slot(rows):
        _, _, input_channel, output_channel = layout_v9.py_func(group_channels, out_w, kernel_h, kernel_w, sh, sw, dh,
                                                                dw, lanes, phase_count, rows)
        return group_channels * (input_channel + output_channel)

    bands_wanted = -(-UNITS_PER_THREAD * workers // (batch * groups))
    band = max(1, -(-out_h // bands_wanted))
    while band > 1 and slot(band) > SCRATCH_ELEMENTS:
        band = max(1, min(band - 1, band * SCRATCH_ELEMENTS // slot(band)))
    return lanes, band, slot(band)


@inline
def fill(array, start, stop, value):
    """``array[start:stop] = value`` as a plain loop (a slice assignment builds an array view per call)."""
    for index in range(start, stop):
        array[numba.uint64(index)] = value


@inline
def zero_run(array, start, count, lanes):
    """``array[start:start + count] = 0``, a vector at a time (``simd.store_first`` for the last)."""
    lane_count = simd.count(lanes)
    zero = simd.zeros(array, lanes)
    for offset in range(0, count, lane_count):
        simd.store_first(array, start + offset, zero, min(lane_count, count - offset))


@inline
def load_phase_rows(x_flat, scratch, start, c0, group_channels, height, width, y0, rows, phases, phase_ranges,
                    phase_w, sw, pw, channel_step, lanes):
    """``scratch[start + c*channel_step + (r*len(phases) + s)*phase_w + q] = x[c0 + c, y0 + r, q*sw + phases[s] - pw]``
    for ``c < group_channels``, ``r < rows``; zero in the padding. Strides 1 and 2 move a vector at a time, the
    padding zeroed by masked loads (``simd.load_range``), stride 2 split by ``simd.even_odd`` (its phases are (0,)
    or (0, 1)); wider strides one value at a time (``phase_ranges[s]``: ``output_range`` of phase ``s``, the columns
    ``q`` inside x)."""
    phase_count = len(phases)
    lane_count = simd.count(lanes)
    for c in range(group_channels):
        for r in range(rows):
            y = y0 + r
            row = start + c * channel_step + r * phase_count * phase_w
            if y < 0 or y >= height:
                zero_run(scratch, row, phase_count * phase_w, lanes)
                continue
            source_row = ((c0 + c) * height + y) * width - pw  # padded column 0 (lanes before column 0 unread)
            if sw == 1:
                for q in range(0, phase_w, lane_count):  # columns q - pw + l, inside for pw - q <= l < width + pw - q
                    simd.store_first(scratch, row + q,
                                     simd.load_range(x_flat, source_row + q, pw - q, width + pw - q, lanes),
                                     min(lane_count, phase_w - q))
            elif sw == 2:
                for q in range(0, phase_w, lane_count):  # columns 2q - pw + m, m < 2*lanes
                    first = pw - 2 * q
                    even, odd = simd.even_odd(
                        simd.load_range(x_flat, source_row + 2 * q, first, width + first, lanes),
                        simd.load_range(x_flat, source_row + 2 * q + lane_count, first - lane_count,
                                        width + first - lane_count, lanes))
                    simd.store_first(scratch, row + q, even, min(lane_count, phase_w - q))
                    if phase_count == 2:
                        simd.store_first(scratch, row + phase_w + q, odd, min(lane_count, phase_w - q))
            else:
                for s in range(phase_count):
                    target = row + s * phase_w
                    lo, hi = phase_ranges[s, 0], phase_ranges[s, 1]
                    fill(scratch, target, target + lo, 0)
                    fill(scratch, target + hi, target + phase_w, 0)
                    for q in range(lo, hi):
                        scratch[numba.uint64(target + q)] = x_flat[numba.uint64(source_row + phases[s] + q * sw)]


@inline
def load_padded_rows(source_flat, scratch, start, c0, group_channels, height, width, y0, rows, pitch, channel_step,
                     lanes):
    """``scratch[start + c*channel_step + r*pitch + q] = source[c0 + c, y0 + r, q]`` for ``q < width``, zero up to
    ``pitch`` and in rows past the source; a vector at a time."""
    lane_count = simd.count(lanes)
    for c in range(group_channels):
        for r in range(rows):
            target = start + c * channel_step + r * pitch
            if y0 + r >= height:
                zero_run(scratch, target, pitch, lanes)
                continue
            source = ((c0 + c) * height + y0 + r) * width
            for q in range(0, pitch, lane_count):
                simd.store_first(scratch, target + q, simd.load_range(source_flat, source + q, 0, width - q, lanes),
                                 min(lane_count, pitch - q))


@inline
def multiply_add_four_taps(go, scratch, s, o0, o1, o2, o3, lanes, a0, a1, a2, a3):
    """``a_t + go * scratch[s + o_t : ... + lanes]`` for ``t < 4``."""
    return (simd.multiply_add(go, simd.load(scratch, s + o0, lanes), a0),
            simd.multiply_add(go, simd.load(scratch, s + o1, lanes), a1),
            simd.multiply_add(go, simd.load(scratch, s + o2, lanes), a2),
            simd.multiply_add(go, simd.load(scratch, s + o3, lanes), a3))


@inline
def multiply_add_channels_v9(scratch, x_start, go_start, channel_offset, output_channel, group_channels,
                             o0, o1, o2, o3, o4, o5, o6, o7, lanes):
    """Eight taps of one vector of positions: ``a_t = sum_c scratch[go_start + c*output_channel : ... + lanes] *
    scratch[x_start + channel_offset[c] + o_t : ... + lanes]``, channels in order from zero. The channel's input
    offset is read from an array so that LLVM keeps one address per tap, not one induction variable per tap (eight
    of them, unrolled twice, spilled to the stack)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros(scratch, lanes)
    for c in range(group_channels):
        go = simd.load(scratch, go_start + c * output_channel, lanes)
        s = x_start + channel_offset[c]
        a0, a1, a2, a3 = multiply_add_four_taps(go, scratch, s, o0, o1, o2, o3, lanes, a0, a1, a2, a3)
        a4, a5, a6, a7 = multiply_add_four_taps(go, scratch, s, o4, o5, o6, o7, lanes, a4, a5, a6, a7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@inline
def multiply_add_channels_four_v9(scratch, x_start, go_start, channel_offset, output_channel, group_channels,
                                  o0, o1, o2, o3, lanes):
    """``multiply_add_channels_v9`` for four taps (a block's tail)."""
    a0 = a1 = a2 = a3 = simd.zeros(scratch, lanes)
    for c in range(group_channels):
        a0, a1, a2, a3 = multiply_add_four_taps(simd.load(scratch, go_start + c * output_channel, lanes), scratch,
                                                x_start + channel_offset[c], o0, o1, o2, o3, lanes, a0, a1, a2, a3)
    return a0, a1, a2, a3


@inline
def multiply_add_column_v9(scratch, x_start, go_start, channel_offset, output_channel, group_channels, row_step,
                           go_step, lanes):
    """Four kernel rows of one tap column, two consecutive output rows (stride 1, dilation 1): ``a_pu = sum_c
    scratch[go_start + p*go_step + c*output_channel : ... + lanes] * scratch[x_start + channel_offset[c] + (p + u)*
    row_step : ... + lanes]`` for ``p < 2``, ``u < 4``, channels in order from zero. Row p + 1's kernel row u reads
    the input row of row p's kernel row u + 1: 7 loads per 8 multiply-adds, not 9."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = simd.zeros(scratch, lanes)
    for c in range(group_channels):
        g0 = simd.load(scratch, go_start + c * output_channel, lanes)
        g1 = simd.load(scratch, go_start + go_step + c * output_channel, lanes)
        s = x_start + channel_offset[c]
        x0, x1 = simd.load(scratch, s, lanes), simd.load(scratch, s + row_step, lanes)
        x2, x3 = simd.load(scratch, s + 2 * row_step, lanes), simd.load(scratch, s + 3 * row_step, lanes)
        x4 = simd.load(scratch, s + 4 * row_step, lanes)
        a00 = simd.multiply_add(g0, x0, a00)
        a01 = simd.multiply_add(g0, x1, a01)
        a02 = simd.multiply_add(g0, x2, a02)
        a03 = simd.multiply_add(g0, x3, a03)
        a10 = simd.multiply_add(g1, x1, a10)
        a11 = simd.multiply_add(g1, x2, a11)
        a12 = simd.multiply_add(g1, x3, a12)
        a13 = simd.multiply_add(g1, x4, a13)
    return a00, a01, a02, a03, a10, a11, a12, a13


@inline
def store_column_pair(target_flat, start, out_w, second, whole, a0, a1):
    """One tap of a column block: ``a0`` at ``start`` and, if ``second``, ``a1`` one output row (``out_w``) further
    (``store_positions``: whole vectors, or the first ``out_w`` lanes)."""
    store_positions(target_flat, start, a0, out_w, whole)
    if second:
        store_positions(target_flat, start + out_w, a1, out_w, whole)


@inline
def store_positions(target_flat, start, vector, count, whole):
    """``target[start:start + lanes] = vector`` if ``whole``, else its first ``count`` lanes."""
    if whole:
        simd.store(target_flat, start, vector)
    else:
        simd.store_first(target_flat, start, vector, count)


@jit
def grad_kernel_positions_v9(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, threads, lanes, copy_lanes, band,
                             phases, column_slot, column_shift):
    """``grad_kernel_v9`` for ``lanes`` (a ``simd.Lanes``: positions per vector; ``copy_lanes``: a 64-byte vector, for
    the copies), ``band`` output rows per unit and the column phases of :func:`phases_v9` (int64 arrays);
    ``threads`` must be ``numba.get_num_threads()``."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    bands = (out_h + band - 1) // band
    pitch, phase_w, input_channel, output_channel = layout_v9(group_channels, out_w, kernel_h, kernel_w, sh, sw, dh,
                                                              dw, lane_count, len(phases), band)
    row_step = len(phases) * phase_w  # one input row's phases
    slot = group_channels * (input_channel + output_channel)
    plane, taps = out_h * out_w, kernel_h * kernel_w
    tap_step = kernel_w * plane  # one kernel row down a tap column
    tap_blocks = (taps + TAPS_V9 - 1) // TAPS_V9
    block_offset = np.empty((tap_blocks, TAPS_V9), np.int64)  # a block's taps' input vectors, from its position's
    for block in range(tap_blocks):
        for k in range(TAPS_V9):
            tap = min(block * TAPS_V9 + k, taps - 1)  # taps past the last repeat it
            u, v = tap // kernel_w, tap % kernel_w
            block_offset[block, k] = u * dh * row_step + column_slot[v] * phase_w + column_shift[v]
    channel_offset = np.arange(group_channels) * input_channel
    phase_ranges = np.empty((len(phases), 2), np.int64)
    for s in range(len(phases)):
        phase_ranges[s, 0], phase_ranges[s, 1] = output_range(phases[s], sw, 1, pw, width, phase_w)
    whole = out_w >= lane_count  # every vector of positions inside a row: whole-vector stores
    paired = paired_v9(kernel_h, sh, dh)
    x_flat, grad_out_flat, grad_kernel_flat = x.reshape(-1), grad_out.reshape(-1), grad_kernel.reshape(-1)
    scratch = np.empty(threads * slot, x.dtype)
    units = batch * groups * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        outputs = start + group_channels * input_channel  # the grad_out rows follow the input rows
        b, g, i0, rows = band_of_unit(unit, groups, bands, band, out_h)
        c0 = b * channels + g * group_channels
        rows_in, rows_out = rows_v9(rows, kernel_h, sh, dh)
        load_phase_rows(x_flat, scratch, start, c0, group_channels, height, width, i0 * sh - ph, rows_in, phases,
                        phase_ranges, phase_w, sw, pw, input_channel, copy_lanes)
        load_padded_rows(grad_out_flat, scratch, outputs, c0, group_channels, out_h, out_w, i0, rows_out, pitch,
                         output_channel, copy_lanes)
        target_image = (b * groups + g) * taps * plane
        if paired:
            for i in range(i0, i0 + rows, 2):
                second = i + 1 < i0 + rows  # an odd band's last pair computes a spare row, not stored
                for j in range(0, pitch, lane_count):
                    j = min(j, pitch - lane_count)
                    x_row = start + (i - i0) * sh * row_step + j
                    go_start = outputs + (i - i0) * pitch + j
                    for v in range(kernel_w):
                        x_column = x_row + column_slot[v] * phase_w + column_shift[v]
                        for u0 in range(0, kernel_h, COLUMN_TAPS_V9):
                            a00, a01, a02, a03, a10, a11, a12, a13 = multiply_add_column_v9(
                                scratch, x_column + u0 * row_step, go_start, channel_offset, output_channel,
                                group_channels, row_step, pitch, lanes)
                            k = target_image + (u0 * kernel_w + v) * plane + i * out_w + j
                            store_column_pair(grad_kernel_flat, k, out_w, second, whole, a00, a10)
                            if u0 + 1 < kernel_h:
                                store_column_pair(grad_kernel_flat, k + tap_step, out_w, second, whole, a01, a11)
                            if u0 + 2 < kernel_h:
                                store_column_pair(grad_kernel_flat, k + 2 * tap_step, out_w, second, whole, a02, a12)
                            if u0 + 3 < kernel_h:
                                store_column_pair(grad_kernel_flat, k + 3 * tap_step, out_w, second, whole, a03, a13)
            continue
        for i in range(i0, i0 + rows):
            for j in range(0, pitch, lane_count):
                j = min(j, pitch - lane_count)  # the row's last vector ends at its end (overlap: same values)
                x_start = start + (i - i0) * sh * row_step + j
                go_start = outputs + (i - i0) * pitch + j
                target = target_image + i * out_w + j
                for block in range(tap_blocks):
                    t = block * TAPS_V9
                    last = min(taps - t, TAPS_V9) - 1  # taps past it repeat tap t + last, and are not stored
                    o0, o1, o2, o3 = block_offset[block, 0], block_offset[block, 1], block_offset[block, 2], \
                        block_offset[block, 3]
                    if last < TAIL_TAPS_V9:
                        a0, a1, a2, a3 = multiply_add_channels_four_v9(
                            scratch, x_start, go_start, channel_offset, output_channel, group_channels,
                            o0, o1, o2, o3, lanes)
                        a4 = a5 = a6 = a7 = a3
                    else:
                        a0, a1, a2, a3, a4, a5, a6, a7 = multiply_add_channels_v9(
                            scratch, x_start, go_start, channel_offset, output_channel, group_channels,
                            o0, o1, o2, o3, block_offset[block, 4], block_offset[block, 5], block_offset[block, 6],
                            block_offset[block, 7], lanes)
                    k = target + t * plane
                    store_positions(grad_kernel_flat, k, a0, out_w, whole)
                    if last >= 1:
                        store_positions(grad_kernel_flat, k + plane, a1, out_w, whole)
                    if last >= 2:
                        store_positions(grad_kernel_flat, k + 2 * plane, a2, out_w, whole)
                    if last >= 3:
                        store_positions(grad_kernel_flat, k + 3 * plane, a3, out_w, whole)
                    if last >= 4:
                        store_positions(grad_kernel_flat, k + 4 * plane, a4, out_w, whole)
                    if last >= 5:
                        store_positions(grad_kernel_flat, k + 5 * plane, a5, out_w, whole)
                    if last >= 6:
                        store_positions(grad_kernel_flat, k + 6 * plane, a6, out_w, whole)
                    if last >= 7:
                        store_positions(grad_kernel_flat, k + 7 * plane, a7, out_w, whole)


def grad_kernel_v9(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Output positions in vector lanes for the kernel gradient: per (b, g, band), the band's input rows split by
    column phase and its grad_out rows, then per vector of positions and block of taps a channel loop of one load
    and one multiply-add per tap."""
    workers = numba.get_num_threads()
    batch, channels = x.shape[:2]
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    lanes, band, _ = plan_v9(batch, groups, channels // groups, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw,
                             x.dtype, workers)
    phases, column_slot, column_shift = (np.array(values, np.int64) for values in phases_v9(kernel_w, sw, dw))
    with UnitChunks():
        grad_kernel_positions_v9(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes),
                                 simd.Lanes(64 // x.itemsize), band, phases, column_slot, column_shift)


forward_v9, grad_x_v9 = forward_v8, grad_x_v8  # v9 changes only the kernel gradient
