"""Numbered numba.cuda kernels for the involution op (llm.c style): v1 one thread per result, v2 tiled.

Every kernel gathers: each result element has exactly one writing thread, which sums its terms in the
definition's order (tap by tap, channel by channel; taps reading the zero padding included, so an infinite
weight there gives NaN), so there are no atomics, a launch is bitwise reproducible and v1 and every v2 tile
plan give the same bits. Kernels take validated C-contiguous
device arrays and overwrite their result completely; ``involution.fast.cuda`` validates, allocates and picks
the version, and the launchers below derive the launch configuration from the shape. Index math comes from
``involution.fast.index`` (the same Python functions the CPU kernels compile); flat indices are int64, so
tensors beyond 2**31 elements are addressed correctly. Design notes: docs/cuda.md.

Sizes: ``x / grad_x (B, C, H, W)``, ``kernel / grad_kernel (B, G, Kh, Kw, Ho, Wo)``, ``out / grad_out
(B, C, Ho, Wo)``, channel ``c`` in group ``c // (C // G)``; ``sh, sw`` stride, ``ph, pw`` padding, ``dh, dw``
dilation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from numba import cuda, from_dtype, int64

from involution.spec import Geometry

from .index import cuda_helpers, input_tile_extent, output_tile_extent, tile_counts

VERSIONS = (1, 2)
THREADS_V1 = 256
MAX_BLOCK_THREADS = 256
# Channels a v2 block stages at once; the per-thread accumulators of that many channels stay in registers.
MAX_CHANNELS = 16
# The per-block shared memory every CUDA GPU grants without an opt-in.
SHARED_BYTES = 48 * 1024
MAX_GRID = 2**31 - 1

_helpers = cuda_helpers()
input_coordinate = _helpers["input_coordinate"]
group_of_channel = _helpers["group_of_channel"]
output_of_input = _helpers["output_of_input"]
split_index = _helpers["split_index"]
_tile_counts = _helpers["tile_counts"]
_first_output_reaching = _helpers["first_output_reaching"]
_input_tile_extent = _helpers["input_tile_extent"]
_output_tile_extent = _helpers["output_tile_extent"]


@cuda.jit(device=True, inline=True)
def split_block(block, tiles_h, tiles_w, chunks, groups, group_channels, block_channels):
    """``(b, g, i0, j0, first, count)`` of a v2 block: batch, group, the tile's first row and column (tile
    columns fastest, batch slowest) and its chunk's first channel and channel count."""
    rest, tile_row, tile_col = split_index(block, tiles_h, tiles_w)
    b, g, chunk = split_index(rest, groups, chunks)
    first = g * group_channels + chunk * block_channels
    count = min(block_channels, (g + 1) * group_channels - first)
    return b, g, tile_row * cuda.blockDim.y, tile_col * cuda.blockDim.x, first, count


@cuda.jit(device=True, inline=True)
def tile_prologue(span_h, span_w, kernel_h, kernel_w, sh, sw, dh, dw, group_channels, block_channels, gather):
    """What every v2 block computes first: ``(tx, ty, tile_w, tile_h, rows, cols, plane, tiles_h, tiles_w, chunks)``,
    the thread's place in its ``(blockDim.y, blockDim.x)`` tile of a ``span_h x span_w`` result plane, the staged
    tile's rows, columns and elements per channel (the input under the tile's windows; ``gather``, the input
    gradient: the outputs whose windows reach the tile), and the tiles and channel chunks of the grid."""
    tile_w, tile_h = cuda.blockDim.x, cuda.blockDim.y
    if gather:
        rows, cols = _output_tile_extent(tile_h, kernel_h, sh, dh), _output_tile_extent(tile_w, kernel_w, sw, dw)
    else:
        rows, cols = _input_tile_extent(tile_h, kernel_h, sh, dh), _input_tile_extent(tile_w, kernel_w, sw, dw)
    tiles_h, tiles_w, chunks = _tile_counts(span_h, span_w, tile_h, tile_w, group_channels, block_channels)
    return cuda.threadIdx.x, cuda.threadIdx.y, tile_w, tile_h, rows, cols, rows * cols, tiles_h, tiles_w, chunks


@cuda.jit(device=True, inline=True)
def multiply_add_channels(accumulators, weight, staged, plane, tap, count):
    """``accumulators[k] += weight * staged[k*plane + tap]`` for the block's ``count`` channels (registers)."""
    for k in range(MAX_CHANNELS):
        if k < count:
            accumulators[k] += weight * staged[k * plane + tap]


@cuda.jit(device=True, inline=True)
def store_channels(result, accumulators, b, first, count, row, col):
    """``result[b, first + k, row, col] = accumulators[k]`` for the block's ``count`` channels."""
    for k in range(MAX_CHANNELS):
        if k < count:
            result[b, first + k, row, col] = accumulators[k]


@cuda.jit(device=True, inline=True)
def stage_tile(staged, source, b, first_channel, channels, row0, col0, rows, cols, thread, threads):
    """``staged[(k*rows + r)*cols + q] = source[b, first_channel + k, row0 + r, col0 + q]``, 0 outside ``source``.

    The block's threads stride through the tile with consecutive threads on consecutive columns: coalesced.
    """
    height, width = source.shape[2], source.shape[3]
    plane = rows * cols
    for flat in range(thread, channels * plane, threads):
        row = row0 + flat % plane // cols
        col = col0 + flat % cols
        if 0 <= row < height and 0 <= col < width:
            staged[flat] = source[b, first_channel + flat // plane, row, col]
        else:
            staged[flat] = 0


@functools.cache
def kernels(dtype) -> SimpleNamespace:
    """The kernels compiled (lazily, on first launch) for ``dtype``: ``forward_v1``, ``forward_v2``, ... by name."""
    element = from_dtype(np.dtype(dtype))
    zero = np.dtype(dtype).type(0)

    @cuda.jit
    def forward_v1(x, kernel, out, sh, sw, ph, pw, dh, dw):
        """One thread per output element, W fastest: a warp reads kernel rows coalesced; x taps hit L1/L2.
        Taps in the padding multiply 0, as in the definition (v2 stages the zeros)."""
        batch, channels, height, width = x.shape
        groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
        start = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        for index in range(start, out.size, int64(cuda.gridDim.x) * cuda.blockDim.x):
            b, c, plane = split_index(index, channels, out_h * out_w)
            _, i, j = split_index(plane, out_h, out_w)
            g = group_of_channel(c, channels // groups)
            total = zero
            for u in range(kernel_h):
                row = input_coordinate(i, u, sh, dh, ph)
                for v in range(kernel_w):
                    col = input_coordinate(j, v, sw, dw, pw)
                    if 0 <= row < height and 0 <= col < width:
                        total += kernel[b, g, u, v, i, j] * x[b, c, row, col]
                    else:  # the zero padding: x_pad = 0, so an infinite weight gives NaN
                        total += kernel[b, g, u, v, i, j] * zero
            out[b, c, i, j] = total

    @cuda.jit
    def grad_x_v1(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):
        """One thread per input element, gathering the (output, tap) pairs that read it."""
        batch, channels, height, width = grad_x.shape
        groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
        start = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        for index in range(start, grad_x.size, int64(cuda.gridDim.x) * cuda.blockDim.x):
            b, c, plane = split_index(index, channels, height * width)
            _, row, col = split_index(plane, height, width)
            g = group_of_channel(c, channels // groups)
            total = zero
            for u in range(kernel_h):
                i = output_of_input(row, u, sh, dh, ph, out_h)
                if i >= 0:
                    for v in range(kernel_w):
                        j = output_of_input(col, v, sw, dw, pw, out_w)
                        if j >= 0:
                            total += kernel[b, g, u, v, i, j] * grad_out[b, c, i, j]
            grad_x[b, c, row, col] = total

    @cuda.jit
    def grad_kernel_v1(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw):
        """One thread per kernel element, summing over the channels of its group."""
        batch, channels, height, width = x.shape
        groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
        group_channels = channels // groups
        start = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        for index in range(start, grad_kernel.size, int64(cuda.gridDim.x) * cuda.blockDim.x):
            b, g, rest = split_index(index, groups, kernel_h * kernel_w * out_h * out_w)
            _, tap, plane = split_index(rest, kernel_h * kernel_w, out_h * out_w)
            _, u, v = split_index(tap, kernel_h, kernel_w)
            _, i, j = split_index(plane, out_h, out_w)
            row = input_coordinate(i, u, sh, dh, ph)
            col = input_coordinate(j, v, sw, dw, pw)
            inside = 0 <= row < height and 0 <= col < width
            total = zero
            for c in range(g * group_channels, (g + 1) * group_channels):
                if inside:
                    total += grad_out[b, c, i, j] * x[b, c, row, col]
                else:  # x_pad = 0: an infinite grad_out gives NaN
                    total += grad_out[b, c, i, j] * zero
            grad_kernel[b, g, u, v, i, j] = total

    @cuda.jit
    def forward_v2(x, kernel, out, sh, sw, ph, pw, dh, dw, block_channels):
        """A block computes a (blockDim.y, blockDim.x) output tile for ``block_channels`` channels of one group.

        The input tile under all the tile's windows is staged in shared memory once per channel and read
        for every tap; each thread loads its kernel tap once and applies it to all the block's channels.
        """
        batch, channels, height, width = x.shape
        groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
        group_channels = channels // groups
        tx, ty, tile_w, tile_h, rows, cols, plane, tiles_h, tiles_w, chunks = tile_prologue(
            out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, group_channels, block_channels, False)
        staged = cuda.shared.array(0, element)
        accumulators = cuda.local.array(MAX_CHANNELS, element)
        for block in range(int64(cuda.blockIdx.x), batch * groups * chunks * tiles_h * tiles_w, cuda.gridDim.x):
            b, g, i0, j0, first, count = split_block(block, tiles_h, tiles_w, chunks, groups, group_channels,
                                                     block_channels)
            stage_tile(staged, x, b, first, count, input_coordinate(i0, 0, sh, dh, ph),
                       input_coordinate(j0, 0, sw, dw, pw), rows, cols, ty * tile_w + tx, tile_w * tile_h)
            cuda.syncthreads()
            i, j = i0 + ty, j0 + tx
            if i < out_h and j < out_w:
                for k in range(MAX_CHANNELS):
                    accumulators[k] = 0
                for u in range(kernel_h):
                    for v in range(kernel_w):
                        weight = kernel[b, g, u, v, i, j]
                        tap = (ty * sh + u * dh) * cols + tx * sw + v * dw
                        multiply_add_channels(accumulators, weight, staged, plane, tap, count)
                store_channels(out, accumulators, b, first, count, i, j)
            cuda.syncthreads()

    @cuda.jit
    def grad_x_v2(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, block_channels):
        """A block computes a (blockDim.y, blockDim.x) tile of ``grad_x`` for ``block_channels`` channels.

        The ``grad_out`` tile of every output whose window reaches the input tile is staged in shared
        memory; each thread loads a kernel tap once and applies it to all the block's channels.
        """
        batch, channels, height, width = grad_x.shape
        groups, kernel_h, kernel_w, out_h, out_w = kernel.shape[1:]
        group_channels = channels // groups
        tx, ty, tile_w, tile_h, rows, cols, plane, tiles_h, tiles_w, chunks = tile_prologue(
            height, width, kernel_h, kernel_w, sh, sw, dh, dw, group_channels, block_channels, True)
        staged = cuda.shared.array(0, element)
        accumulators = cuda.local.array(MAX_CHANNELS, element)
        for block in range(int64(cuda.blockIdx.x), batch * groups * chunks * tiles_h * tiles_w, cuda.gridDim.x):
            b, g, row0, col0, first, count = split_block(block, tiles_h, tiles_w, chunks, groups, group_channels,
                                                         block_channels)
            i0 = _first_output_reaching(row0, kernel_h, sh, dh, ph)
            j0 = _first_output_reaching(col0, kernel_w, sw, dw, pw)
            stage_tile(staged, grad_out, b, first, count, i0, j0, rows, cols, ty * tile_w + tx, tile_w * tile_h)
            cuda.syncthreads()
            row, col = row0 + ty, col0 + tx
            if row < height and col < width:
                for k in range(MAX_CHANNELS):
                    accumulators[k] = 0
                for u in range(kernel_h):
                    i = output_of_input(row, u, sh, dh, ph, out_h)
                    if i >= 0:
                        for v in range(kernel_w):
                            j = output_of_input(col, v, sw, dw, pw, out_w)
                            if j >= 0:
                                weight = kernel[b, g, u, v, i, j]
                                tap = (i - i0) * cols + j - j0
                                multiply_add_channels(accumulators, weight, staged, plane, tap, count)
                store_channels(grad_x, accumulators, b, first, count, row, col)
            cuda.syncthreads()

    @cuda.jit
    def grad_kernel_v2(grad_out, x, grad_kernel, sh, sw, ph, pw, dh, dw, block_channels):
        """A block computes all taps of a (blockDim.y, blockDim.x) tile of ``grad_kernel`` for one group.

        It walks the group's channels ``block_channels`` at a time: the input tile of those channels is
        staged in shared memory and each thread keeps their ``grad_out`` values in registers. The thread
        owning a kernel element writes it on the first pass and continues its sum on later ones (no atomics),
        channel by channel as in v1: the result does not depend on the channels per pass.
        """
        batch, channels, height, width = x.shape
        groups, kernel_h, kernel_w, out_h, out_w = grad_kernel.shape[1:]
        group_channels = channels // groups
        tx, ty, tile_w, tile_h, rows, cols, plane, tiles_h, tiles_w, _ = tile_prologue(
            out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, group_channels, group_channels, False)
        staged = cuda.shared.array(0, element)
        grad_out_values = cuda.local.array(MAX_CHANNELS, element)
        for block in range(int64(cuda.blockIdx.x), batch * groups * tiles_h * tiles_w, cuda.gridDim.x):
            b, g, i0, j0, _, _ = split_block(block, tiles_h, tiles_w, 1, groups, group_channels, group_channels)
            i, j = i0 + ty, j0 + tx
            inside = i < out_h and j < out_w
            for done in range(0, group_channels, block_channels):
                first = g * group_channels + done
                count = min(block_channels, group_channels - done)
                stage_tile(staged, x, b, first, count, input_coordinate(i0, 0, sh, dh, ph),
                           input_coordinate(j0, 0, sw, dw, pw), rows, cols, ty * tile_w + tx, tile_w * tile_h)
                if inside:
                    for k in range(MAX_CHANNELS):
                        if k < count:
                            grad_out_values[k] = grad_out[b, first + k, i, j]
                cuda.syncthreads()
                if inside:
                    for u in range(kernel_h):
                        for v in range(kernel_w):
                            tap = (ty * sh + u * dh) * cols + tx * sw + v * dw
                            # continue the previous passes' sum: v1's order, whatever the channels per pass
                            total = zero if done == 0 else grad_kernel[b, g, u, v, i, j]
                            for k in range(MAX_CHANNELS):
                                if k < count:
                                    total += grad_out_values[k] * staged[k * plane + tap]
                            grad_kernel[b, g, u, v, i, j] = total
                cuda.syncthreads()

    return SimpleNamespace(forward_v1=forward_v1, forward_v2=forward_v2, grad_x_v1=grad_x_v1,
                           grad_x_v2=grad_x_v2, grad_kernel_v1=grad_kernel_v1, grad_kernel_v2=grad_kernel_v2)


@dataclass(frozen=True)
class TilePlan:
    """A v2 launch: blocks of ``(tile_h, tile_w)`` threads staging ``channels`` channels in ``shared_bytes``."""

    tile_w: int
    tile_h: int
    channels: int
    shared_bytes: int


def _next_power_of_two(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def plan_tiles(kind: str, geometry: Geometry, itemsize: int, block=None) -> TilePlan | None:
    """The v2 block for ``kind`` ("forward", "grad_x", "grad_kernel"): most threads x channels that fit.

    A block covers up to 32 columns and 256 threads of the result's spatial grid (the output for forward
    and grad_kernel, the input for grad_x), shrinking in height until its staged tile fits ``SHARED_BYTES``.
    ``block=(tile_w, tile_h)`` forces the block (tests use small ones). None when not one channel fits.
    """
    g = geometry
    (sh, sw), (dh, dw) = g.stride, g.dilation
    if kind == "grad_x":
        span_h, span_w, extent = g.height, g.width, output_tile_extent
    else:
        span_h, span_w, extent = g.out_h, g.out_w, input_tile_extent
    if block is None:
        tile_w = min(32, _next_power_of_two(span_w))
        heights = [min(MAX_BLOCK_THREADS // tile_w, _next_power_of_two(span_h))]
        while heights[-1] > 1:
            heights.append(heights[-1] // 2)
    else:
        tile_w, heights = block[0], [block[1]]
    best = None
    for tile_h in heights:
        channel_bytes = extent(tile_h, g.kernel_h, sh, dh) * extent(tile_w, g.kernel_w, sw, dw) * itemsize
        channels = min(MAX_CHANNELS, g.group_channels, SHARED_BYTES // channel_bytes)
        if channels >= 1 and (best is None or tile_h * channels > best.tile_h * best.channels):
            best = TilePlan(tile_w, tile_h, channels, channels * channel_bytes)
    return best


def forward(x, kernel, out, geometry, **launch) -> int:
    """Launch the forward kernel on validated C-contiguous device arrays; overwrite ``out (B, C, Ho, Wo)``."""
    return _launch("forward", (x, kernel, out), geometry, **launch)


def grad_x(grad_out, kernel, grad_x, geometry, **launch) -> int:
    """Launch the input-gradient kernel; overwrite ``grad_x (B, C, H, W)``."""
    return _launch("grad_x", (grad_out, kernel, grad_x), geometry, **launch)


def grad_kernel(grad_out, x, grad_kernel, geometry, **launch) -> int:
    """Launch the kernel-gradient kernel; overwrite ``grad_kernel (B, G, Kh, Kw, Ho, Wo)``."""
    return _launch("grad_kernel", (grad_out, x, grad_kernel), geometry, **launch)


def _launch(kind, arrays, geometry, *, version, stream=0, max_blocks=MAX_GRID, block=None,
            threads=THREADS_V1) -> int:
    """Launch ``kind`` with ``version`` (1 or 2, chosen by the caller: ``involution.fast.cuda.choose_version``);
    return it. A ValueError when v2's tile does not fit shared memory: nothing runs in its place.

    ``max_blocks`` caps the grid (the kernels loop over the rest), ``block`` forces the v2 block and
    ``threads`` the v1 block size.
    """
    g = geometry
    result = arrays[2]
    compiled = kernels(result.dtype)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    scalars = (sh, sw, ph, pw, dh, dw)
    if version == 1:
        blocks = min(-(-result.size // threads), max_blocks)
        getattr(compiled, f"{kind}_v1")[blocks, threads, stream](*arrays, *scalars)
        return 1
    if version != 2:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    plan = plan_tiles(kind, g, result.dtype.itemsize, block)
    if plan is None:
        raise ValueError(f"version 2 of {kind} has no tile that fits {SHARED_BYTES} bytes of shared memory for "
                         f"kernel {g.kernel_h}x{g.kernel_w}, stride {g.stride}, dilation {g.dilation} in "
                         f"{result.dtype}; use version 1 (version=None picks it)")
    span_h, span_w = (g.height, g.width) if kind == "grad_x" else (g.out_h, g.out_w)
    tiles_h, tiles_w, chunks = tile_counts(span_h, span_w, plan.tile_h, plan.tile_w, g.group_channels, plan.channels)
    blocks = g.batch * g.groups * tiles_h * tiles_w * (1 if kind == "grad_kernel" else chunks)
    launch = getattr(compiled, f"{kind}_v2")[min(blocks, max_blocks), (plan.tile_w, plan.tile_h), stream,
                                             plan.shared_bytes]
    launch(*arrays, *scalars, plan.channels)
    return 2


def compile_ptx(dtype, cc=(9, 0)) -> dict[str, str]:
    """PTX of every kernel for ``dtype`` and compute capability ``cc``, by name: needs NVVM and NVRTC, no GPU.

    Proves the kernels type-check and compile for the real target, which numba's simulator never does.
    """
    compiled = kernels(dtype)
    name = from_dtype(np.dtype(dtype)).name
    a4, a6 = f"{name}[:, :, :, ::1]", f"{name}[:, :, :, :, :, ::1]"
    arrays = {"forward": (a4, a6, a4), "grad_x": (a4, a6, a4), "grad_kernel": (a4, a4, a6)}
    ptx = {}
    for kind, types in arrays.items():
        for version in VERSIONS:
            signature = f"({', '.join(types)}, {', '.join(['int64'] * (6 + (version == 2)))})"
            function = getattr(compiled, f"{kind}_v{version}").py_func
            ptx[f"{kind}_v{version}"], _ = cuda.compile_ptx(function, signature, cc=cc)
    return ptx
