"""The input-gradient kernels of the fast CPU backend, numbered (llm.c style: v1 naive, higher versions faster).

``grad_x[b, c, y, x] = sum of kernel[b, g, u, v, i, j] * grad_out[b, c, i, j]`` over the taps and outputs with
``i*sh + u*dh - ph = y`` and ``j*sw + v*dw - pw = x`` (a gather: no atomics). Each kernel takes validated C-contiguous
``grad_out (B, C, Ho, Wo)``, ``kernel (B, G, Kh, Kw, Ho, Wo)`` and a preallocated ``grad_x (B, C, H, W)`` it
overwrites completely, then ``sh, sw, ph, pw, dh, dw``; each element is written by one ``prange`` unit in a fixed
summation order. ``involution.fast.cpu.KERNELS`` says which public version runs which of them, ``scratch_v<n>`` the
scratch it takes.

Versions (gaps are history: public versions 4-7 run v3 here, 9 runs v8):

- v1: naive gather, threads over (b, c).
- v2: row gather on flat arrays, threads over (b, g, input row).
- v3: wide rows by stride phase, gathered: each input element written once by the unit owning its row.
- v8: channel vectors: channels-last grad_out copies, four positions' taps in registers.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from . import simd
from .cpu_blocks import (POSITIONS, SCRATCH_ELEMENTS, SIMD_BLOCK, band_of_unit, channel_block_unit, channel_lanes,
                         group_of_channel, inline, input_coordinate, jit, kernel_offset, load_channels_last_by_four,
                         load_wide_rows, multiply_add_flat, multiply_add_four, output_of_input, output_range,
                         simd_length, split_index, units_wanted, wide_layout, wide_scratch_elements, UnitChunks)


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


grad_x_layout, grad_x_scratch = inline(grad_x_layout), inline(grad_x_scratch)


def scratch_v3(geometry, workers: int) -> int:
    """Scratch elements of :func:`grad_x_v3` on ``workers`` threads, in exact Python ints."""
    g = geometry
    (sh, sw), (ph, _), (dh, dw) = g.stride, g.padding, g.dilation
    lengths = grad_x_scratch.py_func(g.group_channels, g.height, g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, ph,
                                     dh, dw)
    _, _, band, rows = grad_x_layout.py_func(g.height, g.out_h, g.out_w, g.kernel_h, g.kernel_w, sh, sw, ph, dh, dw)
    return wide_scratch_elements(lengths, rows, band, g.batch, g.groups, workers)


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


def input_rows_per_unit(batch, groups, group_channels, lanes, height, width, out_h, out_w, kernel_h, sh, dh, workers):
    """``(band, slot)``: input rows per unit (about UNITS_PER_THREAD units per thread, the grad_out rows they read
    within SCRATCH_ELEMENTS) and the per-thread scratch length: those grad_out rows channels-last, one input row."""
    blocks = (group_channels + lanes - 1) // lanes
    rows_fit = max(1, SCRATCH_ELEMENTS // (out_w * lanes))
    by_memory = height if out_h <= rows_fit else max(1, rows_fit * sh - (kernel_h - 1) * dh)
    bands_wanted = units_wanted(workers, batch * groups * blocks)
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
    thread (``input_rows_per_unit``), tap steps ``u_step = sh // gcd(sh, dh)``, ``v_step = sw // gcd(sw, dw)``; ``threads`` must
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
            load_channels_last_by_four(grad_out_flat, scratch, start, c0, valid, lanes, out_h, out_w, i_lo, i_hi - i_lo + 1,
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
    lanes = channel_lanes(channels // groups, grad_x.dtype)
    band, slot = input_rows_per_unit(batch, groups, channels // groups, lanes, height, width, out_h, out_w, kernel_h, sh, dh,
                         workers)
    with UnitChunks():
        grad_x_channels_v8(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, workers, simd.Lanes(lanes), band, slot,
                           sh // math.gcd(sh, dh), sw // math.gcd(sw, dw))


def scratch_v8(geometry, workers: int) -> int:
    """Scratch elements of :func:`grad_x_v8` on ``workers`` threads (float32, whose vectors hold at least as many
    channels as float64's), in exact Python ints: one slot per thread."""
    g = geometry
    lanes = channel_lanes(g.group_channels, np.float32)
    return workers * input_rows_per_unit(g.batch, g.groups, g.group_channels, lanes, g.height, g.width, g.out_h,
                                         g.out_w, g.kernel_h, g.stride[0], g.dilation[0], workers)[1]
