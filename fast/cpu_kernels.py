"""Numbered numba CPU kernels for the involution op (llm.c style: v1 naive, higher versions faster).

Every kernel takes validated C-contiguous arrays and a preallocated C-contiguous result it overwrites
completely; ``prange`` hands each thread whole output rows, so every element has one writer (no atomics)
and a fixed summation order (bitwise reproducible for any thread count). ``involution.fast.cpu`` validates,
allocates and picks the version; ``tests/test_fast_cpu.py`` checks each version against the NumPy reference.

Sizes: ``x (B, C, H, W)``, ``kernel (B, G, Kh, Kw, Ho, Wo)``, ``out / grad_out (B, C, Ho, Wo)``,
channel ``c`` in group ``c // (C // G)``; ``sh, sw`` stride, ``ph, pw`` padding, ``dh, dw`` dilation.
"""
from __future__ import annotations

import numba
from numba import prange

from .index import cpu_helpers

_helpers = cpu_helpers()
input_coordinate = _helpers["input_coordinate"]
group_of_channel = _helpers["group_of_channel"]
output_of_input = _helpers["output_of_input"]
output_range = _helpers["output_range"]

jit = numba.njit(parallel=True, cache=True, nogil=True)


@numba.njit(inline="always", cache=True)
def multiply_add(target, left, right):
    """``target += left * right`` on equal-length 1-D views; a 0-based loop, so LLVM emits SIMD."""
    for j in range(target.size):
        target[j] += left[j] * right[j]


@numba.njit(inline="always", cache=True)
def multiply_add_flat(target, target_start, target_step, left, left_start, right, right_start, right_step, count):
    """``target[t0 + j*ts] += left[l0 + j] * right[r0 + j*rs]`` for ``j < count`` on flat arrays.

    Unsigned indices spare numba's negative-index wraparound, so LLVM vectorises the loop (and versions it
    for unit steps); no array views are made, so no reference counting in the hot loop.
    """
    for j in range(count):
        target[numba.uint64(target_start + j * target_step)] += (
            left[numba.uint64(left_start + j)] * right[numba.uint64(right_start + j * right_step)])


# ---------------------------------------------------------------------------------------------- forward
@jit
def forward_v1(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Naive: one output element at a time, every tap bounds-checked; threads over (b, c)."""
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


@jit
def forward_v2(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """Row-wise: threads over (b, g, i); per tap, the kernel row is reused by the group's channels, the
    W loop is clipped to the taps inside the input (no branch) and contiguous for stride 1 (SIMD)."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    for unit in prange(batch * groups * out_h):
        b, g, i = unit // (groups * out_h), unit // out_h % groups, unit % out_h
        first = g * group_channels
        for c in range(first, first + group_channels):
            out[b, c, i, :] = 0
        for u in range(kernel_h):
            row = input_coordinate(i, u, sh, dh, ph)
            if row < 0 or row >= height:
                continue
            for v in range(kernel_w):
                lo, hi = output_range(v, sw, dw, pw, width, out_w)
                col0 = input_coordinate(0, v, sw, dw, pw)
                kernel_taps = kernel[b, g, u, v, i, lo:hi]
                for c in range(first, first + group_channels):
                    multiply_add(out[b, c, i, lo:hi], kernel_taps, x[b, c, row, col0 + lo * sw:col0 + hi * sw:sw])


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
                        if 0 <= row < height and 0 <= col < width:
                            for c in range(g * group_channels, (g + 1) * group_channels):
                                grad_kernel[b, g, u, v, i, j] += grad_out[b, c, i, j] * x[b, c, row, col]


@jit
def grad_kernel_v2(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """Row-wise like ``forward_v2``: threads over (b, g, i); each kernel row sums the group's channels
    along the clipped, contiguous-for-stride-1 W range."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    for unit in prange(batch * groups * out_h):
        b, g, i = unit // (groups * out_h), unit // out_h % groups, unit % out_h
        first = g * group_channels
        for u in range(kernel_h):
            row = input_coordinate(i, u, sh, dh, ph)
            for v in range(kernel_w):
                grad_row = grad_kernel[b, g, u, v, i]
                grad_row[:] = 0
                if row < 0 or row >= height:
                    continue
                lo, hi = output_range(v, sw, dw, pw, width, out_w)
                col0 = input_coordinate(0, v, sw, dw, pw)
                grad_taps = grad_row[lo:hi]
                for c in range(first, first + group_channels):
                    multiply_add(grad_taps, grad_out[b, c, i, lo:hi], x[b, c, row, col0 + lo * sw:col0 + hi * sw:sw])


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
    reads it, along the clipped W range (contiguous for stride 1)."""
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    for unit in prange(batch * groups * height):
        b, g, y = unit // (groups * height), unit // height % groups, unit % height
        first = g * group_channels
        for c in range(first, first + group_channels):
            grad_x[b, c, y, :] = 0
        for u in range(kernel_h):
            i = output_of_input(y, u, sh, dh, ph, out_h)
            if i < 0:
                continue
            for v in range(kernel_w):
                lo, hi = output_range(v, sw, dw, pw, width, out_w)
                col0 = input_coordinate(0, v, sw, dw, pw)
                kernel_taps = kernel[b, g, u, v, i, lo:hi]
                for c in range(first, first + group_channels):
                    multiply_add(grad_x[b, c, y, col0 + lo * sw:col0 + hi * sw:sw], kernel_taps, grad_out[b, c, i, lo:hi])


# ------------------------------------------------------------------ v3: v2 on flat arrays, no views
@jit
def forward_v3(x, kernel, out, sh, sw, ph, pw, dh, dw):
    """``forward_v2`` indexing flat arrays by offset: no view (and no refcount) per tap and channel."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    for unit in prange(batch * groups * out_h):
        b, g, i = unit // (groups * out_h), unit // out_h % groups, unit % out_h
        first = b * channels + g * group_channels  # flat (b, c) index of the group's first channel
        for c in range(first, first + group_channels):
            out_flat[(c * out_h + i) * out_w:(c * out_h + i + 1) * out_w] = 0
        for u in range(kernel_h):
            row = input_coordinate(i, u, sh, dh, ph)
            if row < 0 or row >= height:
                continue
            for v in range(kernel_w):
                lo, hi = output_range(v, sw, dw, pw, width, out_w)
                col0 = input_coordinate(0, v, sw, dw, pw)
                kernel_start = ((((b * groups + g) * kernel_h + u) * kernel_w + v) * out_h + i) * out_w + lo
                for c in range(first, first + group_channels):
                    multiply_add_flat(out_flat, (c * out_h + i) * out_w + lo, 1, kernel_flat, kernel_start,
                                      x_flat, (c * height + row) * width + col0 + lo * sw, sw, hi - lo)


@jit
def grad_kernel_v3(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
    """``grad_kernel_v2`` indexing flat arrays by offset."""
    batch, channels, height, width = x.shape
    groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
    group_channels = channels // groups
    x_flat, grad_out_flat, grad_kernel_flat = x.reshape(-1), grad_out.reshape(-1), grad_kernel.reshape(-1)
    for unit in prange(batch * groups * out_h):
        b, g, i = unit // (groups * out_h), unit // out_h % groups, unit % out_h
        first = b * channels + g * group_channels
        for u in range(kernel_h):
            row = input_coordinate(i, u, sh, dh, ph)
            for v in range(kernel_w):
                grad_start = ((((b * groups + g) * kernel_h + u) * kernel_w + v) * out_h + i) * out_w
                grad_kernel_flat[grad_start:grad_start + out_w] = 0
                if row < 0 or row >= height:
                    continue
                lo, hi = output_range(v, sw, dw, pw, width, out_w)
                col0 = input_coordinate(0, v, sw, dw, pw)
                for c in range(first, first + group_channels):
                    multiply_add_flat(grad_kernel_flat, grad_start + lo, 1, grad_out_flat, (c * out_h + i) * out_w + lo,
                                      x_flat, (c * height + row) * width + col0 + lo * sw, sw, hi - lo)


@jit
def grad_x_v3(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):
    """``grad_x_v2`` indexing flat arrays by offset."""
    batch, channels, height, width = grad_x.shape
    groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
    group_channels = channels // groups
    kernel_flat, grad_out_flat, grad_x_flat = kernel.reshape(-1), grad_out.reshape(-1), grad_x.reshape(-1)
    for unit in prange(batch * groups * height):
        b, g, y = unit // (groups * height), unit // height % groups, unit % height
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
                kernel_start = ((((b * groups + g) * kernel_h + u) * kernel_w + v) * out_h + i) * out_w + lo
                for c in range(first, first + group_channels):
                    multiply_add_flat(grad_x_flat, (c * height + y) * width + col0 + lo * sw, sw, grad_out_flat,
                                      (c * out_h + i) * out_w + lo, kernel_flat, kernel_start, 1, hi - lo)
