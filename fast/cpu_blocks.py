"""Building blocks shared by the fast CPU kernels of ``cpu_forward``, ``cpu_grad_x`` and ``cpu_grad_kernel``.

Compilation settings (``jit``: parallel kernels, ``jit_unit``: the work unit a kernel's ``prange`` loop calls,
``inline``: helpers inlined into kernels and units), the index math of ``index.py``, the work-unit chunk size
(:class:`UnitChunks`), the flat multiply-add loops of v2-v4, the wide-row layout of v3-v4 (stride phases, bands) and
the channels-last layout of the channel-vector kernels (v6-v9: units, lanes, rows per unit, channels-last loaders,
four-position multiply-adds).

Sizes: ``x (B, C, H, W)``, ``kernel (B, G, Kh, Kw, Ho, Wo)``, ``out / grad_out (B, C, Ho, Wo)``,
channel ``c`` in group ``c // (C // G)``; ``sh, sw`` stride, ``ph, pw`` padding, ``dh, dw`` dilation.
"""
from __future__ import annotations

import numba
import numpy as np

from . import simd
from .index import cpu_helpers
from .runtime import CACHE

_helpers = cpu_helpers()
input_coordinate = _helpers["input_coordinate"]
group_of_channel = _helpers["group_of_channel"]
output_of_input = _helpers["output_of_input"]
output_range = _helpers["output_range"]
split_index = _helpers["split_index"]
kernel_offset = _helpers["kernel_offset"]

# The kernels whose work unit inlines the most helpers (forward v8, grad_kernel v9) keep their ``prange`` loop body to
# one call of a ``jit_unit`` function doing one work unit (its index cast to int64: the parfor's own index is
# unsigned, and a second signature would compile the unit twice). numba's parfor passes deep-copy, copy-propagate and
# re-simplify a loop body several times over; through the ordinary pipeline of a non-parallel function the same body
# compiles in about half the time. ``error_model="numpy"``, as numba compiles a parfor body (no zero-division checks:
# the kernels never divide by zero). Elsewhere the parfor passes cost less than a unit's extra code library, or (grad_x
# v8) the unit ran 10-20% slower, so those kernels keep their bodies in the loop (docs/performance.md, "Cold start").
jit = numba.njit(parallel=True, cache=CACHE, nogil=True)
jit_unit = numba.njit(cache=CACHE, nogil=True, error_model="numpy")
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


simd_length, wide_layout = inline(simd_length), inline(wide_layout)


def wide_scratch_elements(lengths, rows: int, band: int, batch: int, groups: int, workers: int) -> int:
    """Scratch elements of a wide-row kernel (v3, v4) whose per-worker scratch ``lengths`` are allocated by at most
    one worker per unit of ``band`` of the ``rows`` rows (an empty batch allocates none)."""
    units = batch * groups * -(-rows // band)
    return min(workers, units) * sum(lengths)


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
def store_wide_rows(wide_flat, wide_start, wide, target_flat, target_start, out_w, rows):
    """``target[r, j] = wide[r*wide + j]`` for ``r < rows``, ``j < out_w``: drop the junk columns. Element by element:
    a slice assignment between two arrays checks at run time whether they overlap, which in a ``numba.cfunc`` (whose
    array arguments may alias) made forward v4 up to 1.4x slower on small rows."""
    for r in range(rows):
        source, target = wide_start + r * wide, target_start + r * out_w
        for j in range(out_w):
            target_flat[numba.uint64(target + j)] = wide_flat[numba.uint64(source + j)]


# ---------------------------------------------- channel vectors (v5's layout, run by v6-v9): channels-last copies
# v3 and v4 vectorise along output positions and spend 37-72% of their time building stride-phase and wide
# kernel copies. v5 vectorises along channels instead: per (b, g, block of LANES channels, band of output rows),
# one pass copies the band's padded input rows channels-last, S[r, q, l] = x_pad[c0 + l, y0 + r, q]; then every
# output position is one ``simd.Vector`` of its LANES channels, and tap (u, v) is one kernel value broadcast
# against one vector load, multiply-added in a register. POSITIONS consecutive output positions (flat over the
# band, so rows of 7 leave no tail) are accumulated at once in local vectors, which LLVM keeps in registers.
# The kernel is read where it lies: the POSITIONS values of a tap are consecutive. Scratch: one channels-last
# band per thread (``numba.get_thread_id``), bounded by SCRATCH_ELEMENTS; units are scheduled one at a time
# (parallel chunk size 1), so a descheduled thread holds up at most one unit. Same summation order as v1-v4.
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
def inside_columns(width, wide, pw):
    """``(lo, hi)``: the columns ``q`` of a row of ``wide`` padded columns that hold input column ``q - pw`` of an
    input ``width`` wide (the others are padding; ``lo <= hi``)."""
    lo = min(pw, wide)
    return lo, max(lo, min(wide, width + pw))


@inline
def zero_row_padding(scratch, row_start, wide, lanes, lo, hi, y, height):
    """Zero the padding of the channels-last row ``scratch[row_start:row_start + wide*lanes]`` (``lanes`` elements per
    column): its columns outside ``[lo, hi)``, or the whole row where input row ``y`` lies outside ``[0, height)``.
    Returns whether it lies inside (then columns ``[lo, hi)`` are the caller's to fill)."""
    row_length = wide * lanes
    if y < 0 or y >= height:
        scratch[row_start:row_start + row_length] = 0
        return False
    scratch[row_start:row_start + lo * lanes] = 0
    scratch[row_start + hi * lanes:row_start + row_length] = 0
    return True


@inline
def load_channels_last(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw):
    """``scratch[start + (r*wide + q)*lanes + l] = x[c0 + l, y0 + r, q - pw]`` for ``l < valid``; zero in the
    padding, past the image and in lanes ``l >= valid``."""
    inside_lo, inside_hi = inside_columns(width, wide, pw)
    for r in range(rows):
        y = y0 + r
        row_start = start + r * wide * lanes
        if not zero_row_padding(scratch, row_start, wide, lanes, inside_lo, inside_hi, y, height):
            continue
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


def band_slot(band, sh, kernel_h, dh, wide, lane_count):
    """Scratch elements of a channels-last copy of the input rows ``band`` output rows read (``wide`` columns of
    ``lane_count`` channels): one thread's slot in the channel-vector forwards and kernel gradient."""
    return ((band - 1) * sh + (kernel_h - 1) * dh + 1) * wide * lane_count


band_slot = inline(band_slot)


def channel_lanes(group_channels: int, dtype) -> int:
    """Channels per vector: the group's channels rounded up to a 32-byte register, at most 64 bytes."""
    per_register = 32 // np.dtype(dtype).itemsize
    return per_register if group_channels <= per_register else 2 * per_register


def units_wanted(workers: int, units_per_band: int) -> int:
    """Bands to split the rows into: about UNITS_PER_THREAD units per thread over ``units_per_band`` units of each
    band (batch x groups x channel blocks); at least one, also for an empty batch (no units, nothing to split)."""
    return -(-UNITS_PER_THREAD * workers // max(1, units_per_band))


def rows_per_unit(batch, groups, group_channels, lanes, out_h, wide, kernel_h, sh, dh, workers) -> int:
    """Output rows per unit of the channel-vector kernels: about UNITS_PER_THREAD units per thread, a unit's
    channels-last rows (``wide`` columns of ``lanes`` channels) within SCRATCH_ELEMENTS."""
    blocks = (group_channels + lanes - 1) // lanes
    by_memory = max(1, (SCRATCH_ELEMENTS // (wide * lanes) - (kernel_h - 1) * dh - 1) // sh + 1)
    bands_wanted = units_wanted(workers, batch * groups * blocks)
    return max(1, min(by_memory, -(-out_h // bands_wanted)))


@inline
def load_channels_last_by_four(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw):
    """``load_channels_last`` four columns at a time, transposed in registers."""
    lane_count = simd.count(lanes)
    inside_lo, inside_hi = inside_columns(width, wide, pw)
    if inside_hi - inside_lo < 4:
        load_channels_last(x_flat, scratch, start, c0, valid, lane_count, height, width, y0, rows, wide, pw)
        return
    load_channels_last_blocks(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw, False)


@inline
def load_channels_last_blocks(x_flat, scratch, start, c0, valid, lanes, height, width, y0, rows, wide, pw,
                              whole_vectors):
    """``load_channels_last`` on rows of at least 4 (``whole_vectors``: ``lanes``) inside columns: four columns at
    a time (``simd.load_columns``), or ``lanes`` at a time (``simd.copy_transposed``), transposed in registers."""
    lane_count = simd.count(lanes)
    inside_lo, inside_hi = inside_columns(width, wide, pw)
    for r in range(rows):
        y = y0 + r
        row_start = start + r * wide * lane_count
        if not zero_row_padding(scratch, row_start, wide, lane_count, inside_lo, inside_hi, y, height):
            continue
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
