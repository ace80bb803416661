"""The forward in the channels-last layout a network keeps: no copy of the input, the kernel or the output.

``out[b, i, j, c] = sum_{u, v} kernel[b, i, j, g, u, v] * x_pad[b, i*sh + u*dh, j*sw + v*dw, c]``, ``g = c // (C //
G)``: the definition of ``involution.fast.cpu_forward`` on arrays stored position-major, which is the memory of torch's
``channels_last`` tensors: ``x`` of shape (B, C, H, W) in ``channels_last`` is a C-contiguous ``(B, H, W, C)`` array,
and the generated kernel, ``conv2``'s ``channels_last`` output ``(B, G*Kh*Kw, Ho, Wo)`` viewed as ``(B, G, Kh, Kw, Ho,
Wo)``, is a C-contiguous ``(B, Ho, Wo, G, Kh, Kw)`` array. In this layout a group's channels at one input position
are consecutive, so they are the SIMD vector as they lie (the contiguous-layout kernels v6/v8 build that vector by
copying the input channels-last first, and the torch op used to copy both arrays to contiguous order before them).

One ``prange`` unit per output row ``(b, i)``; per output position and group, the group's channels in vectors of
``lanes`` (``cpu_blocks.channel_lanes``: 16 float32 channels, two AVX2 registers), the last one masked where ``C / G``
is not a multiple of it. Each output element sums u, then v, from zero with ``fmuladd`` and multiplies a tap reading
the zero padding by 0 (an infinite weight there gives NaN): the summation order of v6 and v8, so results equal theirs
bitwise (tested) and do not depend on the thread count.

:func:`run` is the validated level (the torch op's path for ``channels_last`` CPU tensors, ``involution.torch.ops``);
the backward has no channels-last kernel: the op copies to contiguous order for it.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from involution.spec import Geometry

from . import simd
from .cpu_blocks import channel_lanes, jit
from .runtime import call_guard, call_threads


@jit
def forward_channels_last(x, kernel, out, sh, sw, ph, pw, dh, dw, lanes):
    """``x (B, H, W, C)``, ``kernel (B, Ho, Wo, G, Kh, Kw)`` into ``out (B, Ho, Wo, C)``, all C-contiguous."""
    batch, height, width, channels = x.shape
    out_h, out_w, groups, kernel_h, kernel_w = kernel.shape[1:]
    group_channels = channels // groups
    taps = kernel_h * kernel_w
    lane_count = simd.count(lanes)
    x_flat, kernel_flat, out_flat = x.reshape(-1), kernel.reshape(-1), out.reshape(-1)
    for unit in prange(batch * out_h):
        b, i = unit // out_h, unit % out_h
        for j in range(out_w):
            position = (b * out_h + i) * out_w + j
            for g in range(groups):
                k = (position * groups + g) * taps
                for c0 in range(g * group_channels, (g + 1) * group_channels, lane_count):
                    count = min(lane_count, (g + 1) * group_channels - c0)
                    total = simd.zeros(x_flat, lanes)
                    for u in range(kernel_h):
                        row = i * sh - ph + u * dh
                        for v in range(kernel_w):
                            col = j * sw - pw + v * dw
                            weight = simd.splat(kernel_flat[k + u * kernel_w + v], lanes)
                            if 0 <= row < height and 0 <= col < width:
                                start = ((b * height + row) * width + col) * channels + c0
                                if count == lane_count:
                                    values = simd.load(x_flat, start, lanes)
                                else:
                                    values = simd.load_range(x_flat, start, 0, count, lanes)
                            else:  # the zero padding: x_pad = 0, so an infinite weight gives NaN
                                values = simd.zeros(x_flat, lanes)
                            total = simd.multiply_add(weight, values, total)
                    if count == lane_count:
                        simd.store(out_flat, position * channels + c0, total)
                    else:
                        simd.store_first(out_flat, position * channels + c0, total, count)


def shapes(geometry: Geometry) -> tuple[tuple, tuple, tuple]:
    """The channels-last shapes ``(x (B, H, W, C), kernel (B, Ho, Wo, G, Kh, Kw), out (B, Ho, Wo, C))``."""
    batch, channels, height, width = geometry.x_shape
    _, groups, kernel_h, kernel_w, out_h, out_w = geometry.kernel_shape
    return ((batch, height, width, channels), (batch, out_h, out_w, groups, kernel_h, kernel_w),
            (batch, out_h, out_w, channels))


def run(arrays, geometry: Geometry) -> None:
    """The forward on channels-last arrays already checked against ``geometry``; overwrites ``out``.

    Parameters
    ----------
    arrays : tuple ``(x, kernel, out)`` of C-contiguous ndarrays of one dtype, float32 or float64
        ``x (B, H, W, C)``, ``kernel (B, Ho, Wo, G, Kh, Kw)``, ``out (B, Ho, Wo, C)`` (:func:`shapes`): the memory
        of torch's ``channels_last`` ``x`` and output and of a position-major kernel.
    geometry : Geometry
        From ``involution.spec.check_geometry`` (or the checks that return one), in the (B, C, H, W) convention.

    Raises
    ------
    ValueError
        ``arrays`` whose count, shapes, dtype or layout do not match ``geometry``.
    """
    if len(arrays) != 3:
        raise ValueError(f"arrays must be three ndarrays (x, kernel, out), got {len(arrays)}")
    dtype = arrays[-1].dtype
    for index, (array, shape) in enumerate(zip(arrays, shapes(geometry))):
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype or \
                dtype not in (np.float32, np.float64) or not array.flags.c_contiguous:
            raise ValueError(f"arrays[{index}] of the channels-last forward must be a C-contiguous float32 or float64 "
                             f"ndarray of shape {shape} and the result's dtype ({dtype}), got "
                             f"{type(array).__name__} {getattr(array, 'shape', '')} {getattr(array, 'dtype', '')}")
    x, kernel, out = arrays
    if out.size == 0:
        return
    if x.size == 0 or kernel.size == 0:  # no channels or no positions: every element is a sum of no terms
        out.fill(0)
        return
    lanes = simd.Lanes(channel_lanes(geometry.group_channels, dtype))
    with call_guard(), call_threads():
        forward_channels_last(x, kernel, out, *geometry.stride, *geometry.padding, *geometry.dilation, lanes)
