"""The kernel-gradient kernels of the fast CPU backend, numbered (llm.c style: v1 naive, higher versions faster).

``grad_kernel[b, g, u, v, i, j] = sum_{c in group g} grad_out[b, c, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``.
Each kernel takes validated C-contiguous ``grad_out (B, C, Ho, Wo)``, ``x (B, C, H, W)`` and a preallocated
``grad_kernel (B, G, Kh, Kw, Ho, Wo)`` it overwrites completely, then ``sh, sw, ph, pw, dh, dw``; each element is
written by one ``prange`` unit in a fixed summation order (bitwise reproducible for any thread count).
``involution.fast.cpu.KERNELS`` says which public version runs which of them, ``scratch_v<n>`` the scratch it takes.

Versions (gaps are history: public versions 4-6 run v3 here, 8 runs v7):

- v1: naive, threads over (b, g).
- v2: row-wise on flat arrays, threads over (b, g, output row).
- v3: stride-phase copies and wide rows, a tap's band summing the group's channels in contiguous loops.
- v7: channel vectors: channels-last copies, four positions' channel products reduced at once (a tree sum).
- v9: output positions in vector lanes: a channel loop of one load and one multiply-add per tap (a sequence).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import simd
from .cpu_blocks import (POSITIONS, SCRATCH_ELEMENTS, SIMD_BLOCK, band_of_unit, band_slot, channel_lanes, inline,
                         input_coordinate, jit, jit_unit, kernel_offset, load_channels_last_by_four, load_phases,
                         load_wide_rows, multiply_add_flat, multiply_add_padding, output_range, rows_per_unit,
                         simd_length, split_index, store_wide_rows, units_wanted, wide_layout, wide_scratch_elements,
                         UnitChunks)


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


def grad_kernel_scratch(group_channels, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw):
    """Per-worker scratch lengths ``(phases, grad_out_wide, grad_wide)`` of ``grad_kernel_v3``."""
    reach_h, wide, band = wide_layout(out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw)
    return (group_channels * sh * sw * (band + reach_h) * wide + SIMD_BLOCK,
            group_channels * band * wide + SIMD_BLOCK, band * wide + SIMD_BLOCK)


grad_kernel_scratch = inline(grad_kernel_scratch)


def scratch_v3(geometry, workers: int) -> int:
    """Scratch elements of :func:`grad_kernel_v3` on ``workers`` threads, in exact Python ints."""
    g = geometry
    (sh, sw), (dh, dw) = g.stride, g.dilation
    lengths = grad_kernel_scratch.py_func(g.group_channels, g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, dh, dw)
    _, _, band = wide_layout.py_func(g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, dh, dw)
    return wide_scratch_elements(lengths, g.out_h, band, g.batch, g.groups, workers)


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
    input_slot = band_slot(band, sh, kernel_h, dh, wide, lane_count)  # per channel block
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
            load_channels_last_by_four(x_flat, scratch, start + block * input_slot, c0, valid, lanes, height, width,
                                  i0 * sh - ph, (rows - 1) * sh + (kernel_h - 1) * dh + 1, wide, pw)
            load_channels_last_by_four(grad_out_flat, scratch, outputs + block * output_slot, c0, valid, lanes, out_h,
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


def channel_vector_plan(batch, channels, groups, kernel_h, kernel_w, out_h, out_w, sh, sw, dh, dw, dtype, workers):
    """``(lanes, band, slot)`` of :func:`grad_kernel_v7`: channels per vector, output rows per unit (one channel
    block's share of the scratch) and scratch elements per thread (every block's input and grad_out copies)."""
    lanes = channel_lanes(channels // groups, dtype)
    wide = (out_w - 1) * sw + (kernel_w - 1) * dw + 1
    band = rows_per_unit(batch, groups, lanes, lanes, out_h, wide + out_w, kernel_h, sh, dh, workers)
    blocks = -(-(channels // groups) // lanes)
    return lanes, band, blocks * (band_slot.py_func(band, sh, kernel_h, dh, wide, lanes) + band * out_w * lanes)


def scratch_v7(geometry, workers: int) -> int:
    """Scratch elements of :func:`grad_kernel_v7` on ``workers`` threads (float32, the most channels per vector)."""
    g = geometry
    return workers * channel_vector_plan(g.batch, g.channels, g.groups, g.kernel_h, g.kernel_w, g.out_h, g.out_w,
                                         *g.stride, *g.dilation, np.float32, workers)[2]


def grad_kernel_v7(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Channel vectors for the kernel gradient: per (b, g, band), channels-last copies of the input and grad_out
    bands, then per tap four positions' channel products reduced together."""
    workers = numba.get_num_threads()
    lanes, band, _ = channel_vector_plan(*x.shape[:2], *grad_kernel.shape[1:], sh, sw, dh, dw, x.dtype, workers)
    with UnitChunks():
        grad_kernel_channels_v7(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, numba.get_num_threads(),
                                simd.Lanes(lanes), band)


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



def position_lanes(out_w: int, dtype) -> int:
    """Output positions per vector: a 64-byte vector where the output rows fill one, else 32 bytes."""
    per_register = 64 // np.dtype(dtype).itemsize
    return per_register if out_w >= per_register else per_register // 2


def column_phases(kernel_w: int, sw: int, dw: int):
    """``(phases, column_slot, column_shift)``: the column phases ``v*dw mod sw`` the tap columns read, in order of
    first use (at most ``min(sw, Kw)``), and per tap column ``v`` its phase's index and ``v*dw // sw``."""
    phases, column_slot = [], []
    for v in range(kernel_w):
        phase = v * dw % sw
        if phase not in phases:
            phases.append(phase)
        column_slot.append(phases.index(phase))
    return tuple(phases), tuple(column_slot), tuple(v * dw // sw for v in range(kernel_w))


def rows_paired(kernel_h, sh, dh):
    """Whether v9 accumulates two output rows by tap columns (stride and dilation 1 down the columns, so that the rows
    share input rows; kernels at least PAIRED_MIN_KH_V9 tall), not by blocks of TAPS_V9 taps."""
    return dh == 1 and sh == 1 and kernel_h >= PAIRED_MIN_KH_V9


def rows_copied(rows, kernel_h, sh, dh):
    """``(input_rows, grad_out_rows)`` a unit of ``rows`` output rows copies: with paired rows, a spare output row
    (an odd band's last pair) and every row a column block of COLUMN_TAPS_V9 kernel rows reads."""
    if rows_paired(kernel_h, sh, dh):
        return rows * sh + -(-kernel_h // COLUMN_TAPS_V9) * COLUMN_TAPS_V9, rows + 1
    return (rows - 1) * sh + (kernel_h - 1) * dh + 1, rows


def positions_layout(group_channels, out_w, kernel_h, kernel_w, sh, sw, dh, dw, lanes, phase_count, band):
    """``(pitch, phase_w, input_channel, output_channel)`` of a ``band``-row unit: the padded grad_out row (a whole
    vector at least), a phase row (the taps' reach past it), a channel's input and grad_out elements in scratch."""
    pitch = max(out_w, lanes)
    phase_w = pitch + (kernel_w - 1) * dw // sw
    rows_in, rows_out = rows_copied(band, kernel_h, sh, dh)
    return pitch, phase_w, rows_in * phase_count * phase_w, rows_out * pitch


rows_paired, rows_copied, positions_layout = inline(rows_paired), inline(rows_copied), inline(positions_layout)


def positions_plan(batch, groups, group_channels, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, dtype, workers):
    """``(lanes, band, slot)``: positions per vector (:func:`position_lanes`), output rows per unit (about
    UNITS_PER_THREAD units per thread, the unit's copies within SCRATCH_ELEMENTS, at least one row) and scratch elements
    per thread."""
    lanes = position_lanes(out_w, dtype)
    phase_count = len(column_phases(kernel_w, sw, dw)[0])

    def slot(rows):
        _, _, input_channel, output_channel = positions_layout.py_func(group_channels, out_w, kernel_h, kernel_w, sh,
                                                                       sw, dh, dw, lanes, phase_count, rows)
        return group_channels * (input_channel + output_channel)

    bands_wanted = units_wanted(workers, batch * groups)
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


@jit_unit
def grad_kernel_unit_v9(grad_out, x, grad_kernel, scratch, start, unit, sh, sw, ph, pw, dh, dw, lanes, copy_lanes, band,
                        phases, column_slot, column_shift, phase_ranges, block_offset, channel_offset):
    """One work unit of :func:`grad_kernel_positions_v9`: one (b, g) and a band of ``band`` output rows, its copies at
    ``scratch[start:]``; ``phase_ranges``, ``block_offset`` and ``channel_offset`` are the kernel's tables."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    lane_count = simd.count(lanes)
    bands = (out_h + band - 1) // band
    pitch, phase_w, input_channel, output_channel = positions_layout(group_channels, out_w, kernel_h, kernel_w, sh, sw,
                                                                     dh, dw, lane_count, len(phases), band)
    row_step = len(phases) * phase_w  # one input row's phases
    plane, taps = out_h * out_w, kernel_h * kernel_w
    tap_step = kernel_w * plane  # one kernel row down a tap column
    tap_blocks = (taps + TAPS_V9 - 1) // TAPS_V9
    whole = out_w >= lane_count  # every vector of positions inside a row: whole-vector stores
    paired = rows_paired(kernel_h, sh, dh)
    x_flat, grad_out_flat, grad_kernel_flat = x.reshape(-1), grad_out.reshape(-1), grad_kernel.reshape(-1)
    outputs = start + group_channels * input_channel  # the grad_out rows follow the input rows
    b, g, i0, rows = band_of_unit(unit, groups, bands, band, out_h)
    c0 = b * channels + g * group_channels
    rows_in, rows_out = rows_copied(rows, kernel_h, sh, dh)
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
        return
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


@jit
def grad_kernel_positions_v9(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, threads, lanes, copy_lanes, band,
                             phases, column_slot, column_shift):
    """``grad_kernel_v9`` for ``lanes`` (a ``simd.Lanes``: positions per vector; ``copy_lanes``: a 64-byte vector, for
    the copies), ``band`` output rows per unit and the column phases of :func:`column_phases` (int64 arrays);
    ``threads`` must be ``numba.get_num_threads()``."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    bands = (out_h + band - 1) // band
    _, phase_w, input_channel, output_channel = positions_layout(group_channels, out_w, kernel_h, kernel_w, sh, sw, dh,
                                                                 dw, simd.count(lanes), len(phases), band)
    row_step = len(phases) * phase_w  # one input row's phases
    slot = group_channels * (input_channel + output_channel)
    taps = kernel_h * kernel_w
    tap_blocks = (taps + TAPS_V9 - 1) // TAPS_V9
    block_offset = np.empty((tap_blocks, TAPS_V9), np.int64)  # a block's taps' input vectors, from its position's
    for block in range(tap_blocks):
        for k in range(TAPS_V9):
            tap = min(block * TAPS_V9 + k, taps - 1)  # taps past the last repeat it
            u, v = tap // kernel_w, tap % kernel_w
            block_offset[block, k] = u * dh * row_step + column_slot[v] * phase_w + column_shift[v]
    channel_offset = np.empty(group_channels, np.int64)  # a loop, not an array expression: no parfor to compile
    for c in range(group_channels):
        channel_offset[c] = c * input_channel
    phase_ranges = np.empty((len(phases), 2), np.int64)
    for s in range(len(phases)):
        phase_ranges[s, 0], phase_ranges[s, 1] = output_range(phases[s], sw, 1, pw, width, phase_w)
    scratch = np.empty(threads * slot, x.dtype)
    for unit in prange(batch * groups * bands):
        grad_kernel_unit_v9(grad_out, x, grad_kernel, scratch, numba.get_thread_id() * slot, numba.int64(unit), sh, sw,
                            ph, pw, dh, dw, lanes, copy_lanes, band, phases, column_slot, column_shift, phase_ranges,
                            block_offset, channel_offset)


def grad_kernel_v9(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Output positions in vector lanes for the kernel gradient: per (b, g, band), the band's input rows split by
    column phase and its grad_out rows, then per vector of positions and block of taps a channel loop of one load
    and one multiply-add per tap."""
    workers = numba.get_num_threads()
    batch, channels = x.shape[:2]
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    lanes, band, _ = positions_plan(batch, groups, channels // groups, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw,
                             x.dtype, workers)
    phases, column_slot, column_shift = (np.array(values, np.int64) for values in column_phases(kernel_w, sw, dw))
    with UnitChunks():
        grad_kernel_positions_v9(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes),
                                 simd.Lanes(64 // x.itemsize), band, phases, column_slot, column_shift)


def scratch_v9(geometry, workers: int) -> int:
    """Scratch elements of :func:`grad_kernel_v9` on ``workers`` threads (float32's plan), in exact Python ints."""
    g = geometry
    return workers * positions_plan(g.batch, g.groups, g.group_channels, g.out_h, g.out_w, g.kernel_h, g.kernel_w,
                                    *g.stride, *g.dilation, np.float32, workers)[2]
