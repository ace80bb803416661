"""Index math shared by the CPU and CUDA kernels, written once as plain Python and compiled for each target.

``cpu_helpers`` are ``numba.njit(inline="always")`` versions (for ``njit`` kernels) and ``cuda_helpers`` are
``numba.cuda.jit(device=True)`` versions of the same functions, so both backends use one definition; the CUDA
helpers also hold the tile helpers of the tiled (v2) CUDA kernels, which the launchers call as plain Python.
"""
from __future__ import annotations

from involution.spec import group_of_channel  # the group rule, compiled here for both targets


def input_coordinate(out_index, tap, stride, dilation, padding):
    """Input row (or column) read by output ``out_index`` under kernel tap ``tap``; may fall in the padding."""
    return out_index * stride + tap * dilation - padding


def output_of_input(in_index, tap, stride, dilation, padding, out_size):
    """Output index whose tap ``tap`` reads input ``in_index``, or -1 when none does (backward gather)."""
    shifted = in_index + padding - tap * dilation
    if shifted < 0 or shifted % stride != 0:
        return -1
    out_index = shifted // stride
    return out_index if out_index < out_size else -1


def output_range(tap, stride, dilation, padding, in_size, out_size):
    """Half-open range ``(lo, hi)``, ``0 <= lo <= hi <= out_size``, of the outputs whose tap ``tap`` reads
    inside ``[0, in_size)``; the outputs outside it read the zero padding."""
    offset = tap * dilation - padding
    lo = min(0 if offset >= 0 else (stride - 1 - offset) // stride, out_size)
    hi = min((in_size - 1 - offset) // stride + 1, out_size)
    return lo, max(hi, lo)


def split_index(index, middle, last):
    """``(outer, mid, inner)`` with ``index = (outer*middle + mid)*last + inner``: a work unit's coordinates.

    E.g. a CPU unit ``(b, g, i) = split_index(unit, groups, out_h)``, a CUDA block's tile
    ``(rest, tile_row, tile_col) = split_index(block, tiles_h, tiles_w)``.
    """
    return index // (middle * last), index // last % middle, index % last


def kernel_offset(b, g, u, v, i, groups, kernel_h, kernel_w, out_h, out_w):
    """Flat index of ``kernel[b, g, u, v, i, 0]`` in a C-contiguous ``(B, G, Kh, Kw, Ho, Wo)`` array."""
    return ((((b * groups + g) * kernel_h + u) * kernel_w + v) * out_h + i) * out_w


SHARED = (input_coordinate, group_of_channel, output_of_input, output_range, split_index, kernel_offset)


# --- tiles of the CUDA v2 kernels (plain Python here: the launchers plan with them, the kernels compile them) ------
def input_tile_extent(outputs, kernel_len, stride, dilation):
    """Input rows (or columns) spanned by the windows of ``outputs`` consecutive outputs."""
    return (outputs - 1) * stride + (kernel_len - 1) * dilation + 1


def output_tile_extent(inputs, kernel_len, stride, dilation):
    """Most outputs whose windows reach into ``inputs`` consecutive input rows (or columns)."""
    return (inputs - 1 + (kernel_len - 1) * dilation) // stride + 1


def first_output_reaching(in_start, kernel_len, stride, dilation, padding):
    """Smallest output index (may be < 0) with a tap at input ``in_start`` or later: a ceiling division."""
    return -(((kernel_len - 1) * dilation - padding - in_start) // stride)


def tile_counts(span_h, span_w, tile_h, tile_w, group_channels, block_channels):
    """``(tiles_h, tiles_w, chunks)``: tiles covering a ``span_h x span_w`` grid, chunks of a group's channels."""
    return ((span_h + tile_h - 1) // tile_h, (span_w + tile_w - 1) // tile_w,
            (group_channels + block_channels - 1) // block_channels)


TILES = (input_tile_extent, output_tile_extent, first_output_reaching, tile_counts)


def _compile(decorate, functions=SHARED):
    return {function.__name__: decorate(function) for function in functions}


def cpu_helpers():
    """The shared helpers compiled with ``numba.njit(inline="always")``, by name."""
    import numba

    from .runtime import CACHE

    return _compile(numba.njit(inline="always", cache=CACHE))


def cuda_helpers():
    """The shared helpers compiled with ``numba.cuda.jit(device=True)``, by name."""
    from numba import cuda

    return _compile(cuda.jit(device=True, inline=True), SHARED + TILES)
