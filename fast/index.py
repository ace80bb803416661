"""Index math shared by the CPU and CUDA kernels, written once as plain Python and compiled for each target.

``cpu_helpers`` are ``numba.njit(inline="always")`` versions (for ``njit`` kernels) and ``cuda_helpers`` are
``numba.cuda.jit(device=True)`` versions of the same functions, so both backends use one definition.
"""
from __future__ import annotations


def input_coordinate(out_index, tap, stride, dilation, padding):
    """Input row (or column) read by output ``out_index`` under kernel tap ``tap``; may fall in the padding."""
    return out_index * stride + tap * dilation - padding


def group_of_channel(channel, group_channels):
    """Group of ``channel`` when groups are contiguous blocks of ``group_channels`` (the official layout)."""
    return channel // group_channels


def output_of_input(in_index, tap, stride, dilation, padding, out_size):
    """Output index whose tap ``tap`` reads input ``in_index``, or -1 when none does (backward gather)."""
    shifted = in_index + padding - tap * dilation
    if shifted < 0 or shifted % stride != 0:
        return -1
    out_index = shifted // stride
    return out_index if out_index < out_size else -1


def output_range(tap, stride, dilation, padding, in_size, out_size):
    """Half-open range ``(lo, hi)`` of the outputs whose tap ``tap`` reads inside ``[0, in_size)``: clipped taps."""
    offset = tap * dilation - padding
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = min((in_size - 1 - offset) // stride + 1, out_size)
    return lo, max(hi, lo)


SHARED = (input_coordinate, group_of_channel, output_of_input, output_range)


def _compile(decorate):
    return {function.__name__: decorate(function) for function in SHARED}


def cpu_helpers():
    """The shared helpers compiled with ``numba.njit(inline="always")``, by name."""
    import numba

    return _compile(numba.njit(inline="always", cache=True))


def cuda_helpers():
    """The shared helpers compiled with ``numba.cuda.jit(device=True)``, by name."""
    from numba import cuda

    return _compile(cuda.jit(device=True, inline=True))
