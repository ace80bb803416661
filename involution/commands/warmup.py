"""Compile the fast CPU kernels ahead of the first call and cache them on disk (numba's cache: once per machine).

For each ``--dtype``, runs the forward (also in the channels-last layout, ``involution.fast.cpu_forward_channels_last``,
and fused with the kernel generation's span convolution, ``involution.fast.cpu_forward_span``)
and both gradients once on one group of each of RedNet-50's involution layers at batch 1 and 2: the kernel versions
the dispatch policy (``involution.fast.cpu.versions_for``) picks for those layers at any batch, compiled for the
vector width of 16 channels per group. Then, unless ``--rednet-only``, what the conformance suite's small geometries
need: the versions the policy picks for groups of fewer than 5 channels (forward v2, v3 and v4 for each kernel width
up to :data:`SMALL_KERNEL_WIDTHS`, whose tap rows compile per width; gradients v2 and v3) and, in float32, the
channel-vector kernels for 5 to 8 channels per group (8-lane vectors: forward v8, grad_x v8, grad_kernel v7; float64
vectors hold 8 channels for RedNet's 16 already). Kernels already in the cache are loaded, not compiled again; a
geometry the policy serves with another version compiles that one on its first call.

numba compiles one kernel at a time in one process, so the work is split into :data:`JOBS` (each a few kernels of one
dtype), run in ``--jobs`` processes at once (default: one per core), the longest first, so that the processes end
about together; numba's on-disk cache is safe for several processes writing it.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

from involution.arguments import positive_int

DTYPES = ("float32", "float64")
SMALL_KERNEL_WIDTHS = 7  # forward v4 for kernel rows of 1 to 7 taps: the conformance suite's draws
SMALL_CHANNELS = 4  # channels per group where the policy runs v2-v4 (fewer than 5: cpu.channel_vectors_fit)
LANE_CHANNELS = 8  # channels per group where float32 vectors have 8 lanes (cpu_blocks.channel_lanes: 5 to 8)


def add_arguments(parser) -> None:
    parser.add_argument("--dtype", action="append", choices=DTYPES,
                        help="element type to compile for (repeatable; default float32)")
    parser.add_argument("--rednet-only", action="store_true",
                        help="only the versions RedNet-50's layers need, not those of the conformance suite's small "
                             "groups")
    parser.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
                        help="processes compiling at once (default: one per core)")


def warmup_geometries() -> list:
    """One small geometry per distinct set of versions the policy picks for RedNet-50's layers at batch 1 and 8 and
    of grad_kernel v9's output positions per vector (``cpu_grad_kernel.position_lanes``, part of its compiled
    signature: 8 float32 positions for RedNet's 7-wide layer, 16 for the wider ones): the layer with one group of 16
    channels, at batch 1 or 2 (checked to pick the full layer's versions)."""
    import numpy as np

    from involution.benchmarks.layers import REDNET_LAYERS, Layer, layer_geometry
    from involution.fast import cpu, cpu_grad_kernel

    chosen = {}
    for layer in REDNET_LAYERS:
        for batch, small_batch in ((1, 1), (8, 2)):
            geometry = layer_geometry(layer, batch)
            versions = tuple(cpu.versions_for(geometry).items())
            out_w = geometry.out_shape[-1]
            lanes = tuple(cpu_grad_kernel.position_lanes(out_w, dtype) for dtype in (np.float32, np.float64))
            small = layer_geometry(Layer(layer.group_channels, layer.size, layer.stride, layer.kernel,
                                         layer.group_channels), small_batch)
            if tuple(cpu.versions_for(small).items()) != versions:  # keep the policy's pick: run the full layer
                small = geometry
            chosen.setdefault((versions, lanes), small)
    return list(chosen.values())


def _run(name: str, geometry, dtype: str, version: int | None = None) -> str:
    """Run pass ``name`` once on random inputs of ``geometry``; return ``"<name> v<version that ran>"``."""
    import numpy as np

    from involution.fast import cpu

    rng = np.random.default_rng(0)
    first, second, result = cpu.pass_shapes(name, geometry)
    arrays = (rng.standard_normal(first).astype(dtype), rng.standard_normal(second).astype(dtype),
              np.empty(result, dtype))
    return f"{name} v{cpu.run(name, arrays, geometry, version)}"


def rednet_forward(dtype: str) -> set[str]:
    """The forward on :func:`warmup_geometries`, also channels-last (the layout of channels_last torch tensors,
    involution.torch.ops: the same values, position-major) and with the span convolution fused
    (``involution.fast.cpu_forward_span``, what an ``Involution2d`` runs at inference in channels_last, on numba's
    threads or, as a cfunc, on torch's OpenMP threads)."""
    import numpy as np

    from involution.fast import cpu_forward_channels_last, cpu_forward_span
    from involution.fast.cpu_blocks import channel_lanes

    ran = set()
    for geometry in warmup_geometries():
        ran.add(_run("forward", geometry, dtype))
        cpu_forward_channels_last.run(tuple(np.zeros(shape, dtype) for shape in
                                            cpu_forward_channels_last.shapes(geometry)), geometry)
        ran.add("forward channels-last")
        cpu_forward_span.run(tuple(np.zeros(shape, dtype) for shape in cpu_forward_span.shapes(geometry, 4)), geometry)
        cpu_forward_span.openmp_worker(np.dtype(dtype), channel_lanes(geometry.group_channels, dtype))
        ran.add("forward span")
    return ran


def rednet_pass(name: str, dtype: str) -> set[str]:
    """Pass ``name`` ("grad_x" or "grad_kernel") on :func:`warmup_geometries`, as the policy picks."""
    return {_run(name, geometry, dtype) for geometry in warmup_geometries()}


def small_geometry(kernel_w: int = 3, channels: int = SMALL_CHANNELS):
    """A (1, 2 * ``channels``, 8, 8) input in two groups, 3 x ``kernel_w`` taps, padding 1 along the rows."""
    from involution.spec import check_geometry

    return check_geometry((1, 2 * channels, 8, 8), (1, 2, 3, kernel_w, 8, 8 - kernel_w + 1), 1, (1, 0), 1)


def small_forward(dtype: str) -> set[str]:
    """Forward v2 and v3 on groups of :data:`SMALL_CHANNELS` channels, and v4 for each kernel width up to
    :data:`SMALL_KERNEL_WIDTHS` (its tap rows compile per width)."""
    for kernel_w in range(1, SMALL_KERNEL_WIDTHS + 1):
        _run("forward", small_geometry(kernel_w), dtype, 4)
    return {_run("forward", small_geometry(), dtype, version) for version in (2, 3)} | {
        f"forward v4 (Kw 1-{SMALL_KERNEL_WIDTHS})"}


def small_backward(dtype: str) -> set[str]:
    """Both gradients' v2 and v3 on groups of :data:`SMALL_CHANNELS` channels."""
    return {_run(name, small_geometry(), dtype, version) for name in ("grad_x", "grad_kernel") for version in (2, 3)}


def lane_pass(name: str, versions: tuple[int, ...], dtype: str) -> set[str]:
    """Pass ``name``'s channel-vector ``versions`` on groups of :data:`LANE_CHANNELS` channels: 8-lane vectors in
    float32 (float64 vectors have 8 lanes for RedNet's 16 channels already: nothing to do)."""
    if dtype != "float32":
        return set()
    return {f"{_run(name, small_geometry(channels=LANE_CHANNELS), dtype, version)} (8 lanes)" for version in versions}


# name: (function warming the job's kernels, its arguments before the dtype, its seconds per dtype (wall, 2-core Xeon,
# load 1-2, the process's imports included; 0: nothing to do), whether RedNet-50 needs it). Run longest first, so that
# --jobs processes end about together. grad_kernel v9's variants (positions per vector, not channels) come with the
# RedNet jobs: :func:`warmup_geometries` covers each of its position counts, whatever the group's channels.
JOBS = {
    "rednet grad_kernel": (rednet_pass, ("grad_kernel",), {"float32": 27, "float64": 28}, True),
    "rednet forward": (rednet_forward, (), {"float32": 21, "float64": 23}, True),
    "small forward": (small_forward, (), {"float32": 19, "float64": 18}, False),
    "rednet grad_x": (rednet_pass, ("grad_x",), {"float32": 16, "float64": 15}, True),
    "small backward": (small_backward, (), {"float32": 12, "float64": 11}, False),
    "8-lane grad_kernel": (lane_pass, ("grad_kernel", (7,)), {"float32": 11, "float64": 0}, False),
    "8-lane grad_x": (lane_pass, ("grad_x", (8,)), {"float32": 9, "float64": 0}, False),
    "8-lane forward": (lane_pass, ("forward", (8,)), {"float32": 8, "float64": 0}, False),
}


def jobs_for(dtypes, rednet_only: bool) -> list[tuple[str, str]]:
    """``(job name, dtype)`` pairs to run, longest first (:data:`JOBS`' seconds)."""
    chosen = [(seconds[dtype], name, dtype) for name, (_, _, seconds, rednet) in JOBS.items() for dtype in dtypes
              if seconds[dtype] and (rednet or not rednet_only)]
    return [(name, dtype) for _, name, dtype in sorted(chosen, key=lambda job: -job[0])]


def _timed(name: str, dtype: str) -> tuple[float, set[str]]:
    """Run job ``name`` of :data:`JOBS` for ``dtype``; return its wall seconds and the kernels that ran."""
    started = time.perf_counter()
    warm, arguments, _, _ = JOBS[name]
    ran = warm(*arguments, dtype)
    return time.perf_counter() - started, ran


def run(args) -> int:
    from involution.fast import runtime

    dtypes = list(dict.fromkeys(args.dtype or ["float32"]))
    jobs = jobs_for(dtypes, args.rednet_only)
    processes = min(args.jobs, len(jobs))
    started = time.perf_counter()
    if processes == 1:
        results = [_timed(name, dtype) for name, dtype in jobs]
    else:  # fresh interpreters ("spawn"): no numba or threading state copied from this process
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_timed, *zip(*jobs)))
    for dtype in dtypes:
        mine = [(name, elapsed, ran) for (name, job_dtype), (elapsed, ran) in zip(jobs, results) if job_dtype == dtype]
        kernels = sorted(set().union(*(ran for _, _, ran in mine)))
        seconds = ", ".join(f"{name} {elapsed:.1f} s" for name, elapsed, _ in mine)
        print(f"{dtype}: the fast CPU kernels ready ({seconds}: {', '.join(kernels)})")
    print(f"all ready in {time.perf_counter() - started:.1f} s wall, {processes} processes at once")
    folder = runtime.cache_folder() if runtime.CACHE else None
    print(f"cached in {runtime.display_path(folder)}" if folder else "not cached: no writable folder (set NUMBA_CACHE_DIR)")
    return 0
