"""The forward kernels of the fast CPU backend, numbered (llm.c style: v1 naive, higher versions faster).

``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``. Each kernel takes
validated C-contiguous ``x (B, C, H, W)``, ``kernel (B, G, Kh, Kw, Ho, Wo)`` and a preallocated ``out (B, C, Ho, Wo)``
it overwrites completely, then ``sh, sw, ph, pw, dh, dw``; each output element is written by one ``prange`` unit in
a fixed summation order (bitwise reproducible for any thread count). ``involution.fast.cpu.KERNELS`` says which
public version runs which of them, and ``scratch_v<n>`` the scratch each allocates.

Versions (gaps are history: the public versions that changed only another pass):

- v1: naive, threads over (b, c).
- v2: row-wise on flat arrays, threads over (b, g, output row).
- v3: stride-phase copies and wide rows (one contiguous multiply-add per tap over a band).
- v4: v3 with a kernel row summed in registers, two channels per load (rows up to ``MAX_ROW_TAPS`` taps).
- v5: retired: channel vectors with scalar channels-last copies; v6 reproduces it bitwise.
- v6: channel vectors, channels-last copies shuffled in registers, four positions per block.
- v8: v6 with eight positions per block and input columns reused across a kernel row's taps (bitwise v6).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange
from numba.np.unsafe.ndarray import to_fixed_tuple

from . import simd
from .runtime import CACHE
from .cpu_blocks import (POSITIONS, SIMD_BLOCK, band_of_unit, band_slot, channel_block_unit, channel_lanes,
                         group_of_channel, inline, input_coordinate, inside_columns, jit, jit_unit, kernel_offset,
                         load_channels_last_blocks, load_channels_last_by_four, load_phases, load_wide_rows,
                         multiply_add_flat, multiply_add_four, multiply_add_padding, output_range, rows_per_unit,
                         simd_length, split_index, store_wide_rows, wide_layout, wide_scratch_elements, UnitChunks)


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


def forward_scratch(channel_block, group_channels, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw):
    """Per-worker scratch lengths ``(phases, kernel_wide, out_wide)`` of the forward passing ``channel_block``
    channels at a time (v3: 1, v4: ``CHANNEL_BLOCK``): phases of the group's channels (and a spare zero
    channel for an odd last block), the band's wide kernel taps, one wide output row set per channel."""
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    channel_step = sh * sw * (band + reach_h) * wide
    return ((group_channels + channel_block - 1) * channel_step + SIMD_BLOCK,
            kernel_h * kernel_w * band * wide + SIMD_BLOCK, channel_block * (band * wide + SIMD_BLOCK))


forward_scratch = inline(forward_scratch)


def scratch_v3(geometry, workers: int, channel_block: int = 1) -> int:
    """Scratch elements of :func:`forward_v3` on ``workers`` threads (``channel_block``: v4's), exact Python ints."""
    g = geometry
    (sh, sw), (dh, dw) = g.stride, g.dilation
    lengths = forward_scratch.py_func(channel_block, g.group_channels, g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh,
                                      sw, dh, dw)
    _, _, band = wide_layout.py_func(g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, dh, dw)
    return wide_scratch_elements(lengths, g.out_h, band, g.batch, g.groups, workers)


@inline
def load_kernel_band(kernel_flat, kernel_wide, b, g, groups, taps, out_h, out_w, wide, span, row0, rows):
    """Every tap's kernel rows ``[row0, row0 + rows)`` of (b, g) into ``kernel_wide`` (span ``span`` per tap),
    zero past a short last band."""
    for tap in range(taps):
        load_wide_rows(kernel_flat, kernel_offset(b, g, 0, tap, 0, groups, 1, taps, out_h, out_w), kernel_wide,
                       tap * span, out_h, out_w, wide, row0, rows)
        kernel_wide[tap * span + rows * wide:(tap + 1) * span] = 0


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


# ------------------------------------------------------- v4: a kernel row per pass, two channels per load
# v3's loop loads and stores its accumulator for every tap. v4 keeps v3's bands, phases and wide kernel copies
# but runs one loop per kernel row u: it sums the row's Kw taps in registers (Kw is the length of the tuples
# ``column_phase`` and ``column_shift``, a compile-time constant, so LLVM unrolls the tap loop and vectorises along
# the band) for CHANNEL_BLOCK channels at once, each kernel value loaded once for them. Same summation order as v3.
# Compile time: only the loops over a worker's units depend on Kw. They are a C callback per (dtype, Kw),
# :func:`bands_v4` (a ``numba.cfunc``, cached on disk), which the parallel kernel :func:`forward_rows_v4` (compiled
# once per dtype) calls through a function pointer once per worker: a new Kw compiles the callback alone (about 1.6 s),
# where a kernel with Kw in its signature compiled the whole parallel kernel again (about 4.5 s; the conformance suite
# draws Kw 1-7). Same code, so results are bitwise the previous v4's, and its speed (docs/performance.md, "Cold start").
CHANNEL_BLOCK = 2  # channels per pass; larger blocks need more alias checks than LLVM's vectoriser allows
# Widest kernel row v4 unrolls (one callback per Kw: longer rows compile longer, and numba's parfor lowering
# rejected tuples past ~100 elements); the dispatcher runs v3 for wider rows.
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


def bands_signature(dtype):
    """numba signature of the :func:`bands_v4` callbacks for ``dtype`` (float32 or float64)."""
    element = numba.from_dtype(np.dtype(dtype))
    flat = numba.types.Array(element, 1, "C")
    return numba.types.void(numba.types.Array(element, 4, "C"), numba.types.Array(element, 6, "C"),
                            numba.types.Array(element, 4, "C"), flat, flat, flat,
                            numba.types.Array(numba.types.int64, 1, "C"), *(numba.types.int64,) * 8)


def _bands(width):
    """The Python function of :func:`bands_v4` for kernel rows of ``width`` taps (a closure constant)."""
    def bands_of_worker(x, kernel, out, phases, kernel_wide, out_wide, columns, worker, workers, sh, sw, ph, pw, dh,
                        dw):
        column_phase = to_fixed_tuple(columns[:width], width)
        column_shift = to_fixed_tuple(columns[width:], width)
        batch, channels, height, x_width = x.shape
        groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
        group_channels = channels // groups
        reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
        bands = (out_h + band - 1) // band
        plane, span = (band + reach_h) * wide, band * wide
        channel_step, pitch = sh * sw * plane, span + SIMD_BLOCK
        x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
        for unit in range(worker, batch * groups * bands, workers):
            i0, rows, first, length = load_forward_band(x_flat, kernel_flat, phases, kernel_wide, unit, channels,
                                                        groups, group_channels, height, x_width, kernel_h, kernel_w,
                                                        out_h, out_w, sh, sw, ph, pw, reach_h, wide, band, bands)
            for c in range(0, group_channels, CHANNEL_BLOCK):
                out_wide[:] = 0
                for u in range(kernel_h):
                    qu, ru = u * dh // sh, u * dh % sh
                    multiply_add_tap_row(out_wide, pitch, kernel_wide, u * kernel_w * span, span, phases,
                                         (c * sh + ru) * sw * plane + qu * wide, channel_step, plane, column_phase,
                                         column_shift, length)
                for n in range(min(CHANNEL_BLOCK, group_channels - c)):
                    store_wide_rows(out_wide, n * pitch, wide, out_flat, ((first + c + n) * out_h + i0) * out_w,
                                    out_w, rows)
    return bands_of_worker


@functools.lru_cache(maxsize=None)
def bands_v4(width: int, dtype):
    """The C callback running one worker's share of :func:`forward_rows_v4` for kernel rows of ``width`` taps in
    ``dtype``, compiled (or loaded from numba's cache) on first use: ``bands(x, kernel, out, phases, kernel_wide,
    out_wide, columns, worker, workers, sh, sw, ph, pw, dh, dw)`` runs units ``worker, worker + workers, ...`` on
    the worker's scratch; ``columns`` holds each tap column's stride phase, then its shift (``2 * width`` int64)."""
    return Callback(numba.cfunc(bands_signature(dtype), cache=CACHE, error_model="numpy")(_bands(width)))


class Callback:
    """A ``numba.cfunc`` as a kernel argument, its numba type built once: for a cfunc itself numba builds the type on
    every call (about 10 us). Implements numba's wrapper address protocol (``numba.experimental.function_type``)."""

    def __init__(self, cfunc):
        self.cfunc = cfunc
        self._numba_type_ = numba.types.FunctionType(cfunc._sig)

    def __wrapper_address__(self) -> int:
        return self.cfunc.address


@jit
def forward_rows_v4(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, columns, bands_of_worker):
    """``forward_v4`` given tap column ``v``'s stride phase ``v*dw % sw`` and shift ``v*dw // sw`` (``columns``:
    phases, then shifts) and the :func:`bands_v4` callback of the kernel's width and the arrays' dtype."""
    batch, channels = x.shape[:2]
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    _, _, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    phases_length, kernel_length, out_length = forward_scratch(CHANNEL_BLOCK, channels // groups, out_h, out_w,
                                                               kernel_h, kernel_w, sh, sw, dh, dw)
    workers = min(workers, batch * groups * ((out_h + band - 1) // band))
    for worker in prange(workers):  # one scratch set per thread, units dealt round-robin
        # one spare channel of zero phases: an odd group's last pass reads it and drops the result
        phases = np.empty(phases_length, x.dtype)
        kernel_wide = np.empty(kernel_length, x.dtype)
        kernel_wide[kernel_length - SIMD_BLOCK:] = 0
        out_wide = np.empty(out_length, x.dtype)
        bands_of_worker(x, kernel, out, phases, kernel_wide, out_wide, columns, numba.int64(worker), workers, sh, sw,
                        ph, pw, dh, dw)


def forward_v4(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Kernel rows in registers: per (b, g, band) and pair of channels, each kernel row is one vector loop
    (kernel rows up to ``MAX_ROW_TAPS`` wide)."""
    kernel_w = kernel.shape[3]  # at most MAX_ROW_TAPS: involution.fast.cpu.check_version refuses wider rows
    forward_rows_v4(x, kernel, out, sh, sw, ph, pw, dh, dw, numba.get_num_threads(), tap_columns(kernel_w, sw, dw),
                    bands_v4(kernel_w, x.dtype))


@functools.lru_cache(maxsize=1024)
def tap_columns(kernel_w: int, sw: int, dw: int) -> np.ndarray:
    """Each tap column ``v``'s stride phase ``v*dw % sw``, then its shift ``v*dw // sw``: ``2 * kernel_w`` int64
    (kept per arguments and shared: the kernels only read it)."""
    columns = np.arange(0, kernel_w * dw, dw, dtype=np.int64)  # v * dw for each tap column v
    return np.concatenate((columns % sw, columns // sw))


def scratch_v4(geometry, workers: int) -> int:
    """Scratch elements of :func:`forward_v4` on ``workers`` threads: v3's, CHANNEL_BLOCK channels at a time."""
    return scratch_v3(geometry, workers, CHANNEL_BLOCK)


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


def channel_vector_plan(batch, channels, groups, kernel_h, kernel_w, out_h, out_w, sh, sw, dh, dw, dtype, workers):
    """``(lanes, band, wide)`` of the channel-vector forwards: channels per vector (:func:`channel_lanes`), output
    rows per unit (:func:`rows_per_unit`) and the padded input columns a row's taps read."""
    lanes = channel_lanes(channels // groups, dtype)
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    return lanes, rows_per_unit(batch, groups, channels // groups, lanes, out_h, wide, kernel_h, sh, dh, workers), wide


def _plan(x, kernel, sh, sw, dh, dw):
    """``(workers, lanes, band)`` of :func:`channel_vector_plan` for the arrays, on numba's thread count."""
    workers = numba.get_num_threads()
    lanes, band, _ = channel_vector_plan(*x.shape[:2], *kernel.shape[1:], sh, sw, dh, dw, x.dtype, workers)
    return workers, lanes, band


def _geometry_plan(geometry, workers):
    """``(lanes, band, wide)`` for ``geometry`` in float32 (whose vectors hold at least as many channels)."""
    g = geometry
    return channel_vector_plan(g.batch, g.channels, g.groups, g.kernel_h, g.kernel_w, g.out_h, g.out_w, *g.stride,
                               *g.dilation, np.float32, workers)


def scratch_v6(geometry, workers: int) -> int:
    """Scratch elements of :func:`forward_v6` on ``workers`` threads: a channels-last band per thread."""
    lanes, band, wide = _geometry_plan(geometry, workers)
    return workers * band_slot.py_func(band, geometry.stride[0], geometry.kernel_h, geometry.dilation[0], wide, lanes)


def scratch_v8(geometry, workers: int) -> int:
    """Scratch elements of :func:`forward_v8` on ``workers`` threads: v6's band and its :func:`slot_tail`."""
    lanes, _, _ = _geometry_plan(geometry, workers)
    tail = slot_tail(geometry.out_w, geometry.stride[1], geometry.dilation[1], lanes)
    return scratch_v6(geometry, workers) + workers * tail


# -------------------------------------------- v6: channel vectors, layout changes shuffled in registers (v5 retired)
# v5 moves every value between the channels-first arrays and its channels-last scratch one scalar at a time: an
# extract and a store per output value, a load and a store per input value, as many instructions as its
# multiply-adds on 7x7 taps (more on 3x3 and stride 2). v6 moves four columns of ``lanes`` channels at once:
# ``simd.load_columns`` reads 4 consecutive input columns of each channel and shuffles them into 4 channel
# vectors, ``simd.store_columns`` shuffles 4 positions' channel vectors back into runs of 4 outputs per channel.
# Rows narrower than 4 columns fall back to v5's scalar copy. Same arithmetic, so results are bitwise v5's.


@inline
def forward_row_by_four(kernel_flat, kernel_row, plane, scratch, scratch_row, out_flat, target_row, valid, out_w,
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
    """``forward_channels_v5`` with ``load_channels_last_by_four`` and ``simd.store_columns``."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    slot = band_slot(band, sh, kernel_h, dh, wide, lane_count)
    plane, taps = out_h * out_w, kernel_h * kernel_w
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    scratch = np.empty(threads * slot, x.dtype)
    units = batch * groups * blocks * bands
    for unit in prange(units):
        start = numba.get_thread_id() * slot
        b, g, i0, rows, c0, valid = channel_block_unit(unit, groups, blocks, bands, band, out_h, channels,
                                                       group_channels, lane_count)
        load_channels_last_by_four(x_flat, scratch, start, c0, valid, lanes, height, width, i0 * sh - ph,
                              (rows - 1) * sh + (kernel_h - 1) * dh + 1, wide, pw)
        for i in range(i0, i0 + rows):
            forward_row_by_four(kernel_flat, (b * groups + g) * taps * plane + i * out_w, plane, scratch,
                           start + (i - i0) * sh * wide * lane_count, out_flat, c0 * plane + i * out_w, valid,
                           out_w, kernel_h, kernel_w, sw, dh * wide * lane_count, dw, lanes)


def forward_v6(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Channel vectors with layout changes in registers: v5's plan, four columns per shuffle."""
    workers, lanes, band = _plan(x, kernel, sh, sw, dh, dw)
    with UnitChunks():
        forward_channels_v6(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band)


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
def load_channels_last_by_vector(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw):
    """``load_channels_last`` ``lanes`` columns at a time (``simd.copy_transposed``); rows of fewer inside columns
    run ``load_channels_last_by_four``."""
    inside_lo, inside_hi = inside_columns(width, wide, pw)
    if inside_hi - inside_lo < simd.count(lanes):
        load_channels_last_by_four(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw)
        return
    load_channels_last_blocks(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw, True)


def slot_tail(out_w, sw, dw, lanes) -> int:
    """Scratch elements past a v8 band that a block of 5 to 7 positions reads (its missing positions' columns)."""
    if dw != 1 or sw > 2 or out_w < NARROWEST_V8 or out_w >= POSITIONS_V8:
        return 0
    return (POSITIONS_V8 - out_w) * sw * lanes


@jit_unit
def forward_unit_v8(x, kernel, out, scratch, start, unit, sh, sw, ph, pw, dh, dw, lanes, band):
    """One work unit of :func:`forward_channels_v8`: a block of ``lanes`` channels of one (b, g), a band of ``band``
    output rows, its channels-last copy at ``scratch[start:]``."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    blocks, bands = (group_channels + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    plane, taps = out_h * out_w, kernel_h * kernel_w
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    eights = dw == 1 and sw <= 2 and out_w >= NARROWEST_V8
    last = min(out_w, POSITIONS_V8) - 1  # the last live position of a block
    b, g, i0, rows, c0, valid = channel_block_unit(unit, groups, blocks, bands, band, out_h, channels,
                                                   group_channels, lane_count)
    load_channels_last_by_vector(x_flat, scratch, start, c0, valid, lanes, height, width, i0 * sh - ph,
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
            forward_row_by_four(kernel_flat, kernel_row, plane, scratch, scratch_row, out_flat, target_row, valid,
                                out_w, kernel_h, kernel_w, sw, dh * wide * lane_count, dw, lanes)


@jit
def forward_channels_v8(x, kernel, out, sh, sw, ph, pw, dh, dw, threads, lanes, band, tail):
    """``forward_channels_v6`` with blocks of eight positions where the row allows (``multiply_add_taps_eight``);
    ``tail`` is :func:`slot_tail`."""
    batch, channels = x.shape[:2]
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    lane_count = simd.count(lanes)
    blocks, bands = (channels // groups + lane_count - 1) // lane_count, (out_h + band - 1) // band
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    slot = band_slot(band, sh, kernel_h, dh, wide, lane_count) + tail
    scratch = np.empty(threads * slot, x.dtype)
    for unit in prange(batch * groups * blocks * bands):
        forward_unit_v8(x, kernel, out, scratch, numba.get_thread_id() * slot, numba.int64(unit), sh, sw, ph, pw, dh,
                        dw, lanes, band)


def forward_v8(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Channel vectors, eight positions per block, input columns reused across a kernel row's taps."""
    workers, lanes, band = _plan(x, kernel, sh, sw, dh, dw)
    with UnitChunks():
        forward_channels_v8(x, kernel, out, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band,
                            slot_tail(kernel.shape[-1], sw, dw, lanes))
