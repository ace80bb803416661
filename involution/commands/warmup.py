"""Compile the fast CPU kernels ahead of the first call and cache them on disk (numba's cache: once per machine).

For each ``--dtype``, runs the forward (also in the channels-last layout, ``involution.fast.cpu_forward_channels_last``)
and both gradients once on one group of each of RedNet-50's involution layers at batch 1 and 2: the kernel versions
the dispatch policy (``involution.fast.cpu.versions_for``) picks for those layers at any batch, compiled for the
vector width of 16 channels per group; then, unless ``--rednet-only``, the versions it picks for groups of fewer than
5 channels (2, 3 and 4: the conformance suite's shapes) on a small geometry. Kernels already in the cache are loaded,
not compiled again; a geometry the policy serves with another version compiles that one on its first call.

numba compiles one kernel at a time in one process, so the work is split into jobs (each dtype's forward kernels,
and its backward ones) run in ``--jobs`` processes at once (default: one per core); numba's on-disk cache is safe
for several processes writing it.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

from involution.arguments import positive_int

DTYPES = ("float32", "float64")
# The versions the policy picks where the channel-vector kernels do not fit (cpu.choose_version): forward 4, 3 or 2,
# gradients 3 or 2 (version 4's gradients are version 3's).
SMALL_VERSIONS = {"forward": (2, 3, 4), "backward": (2, 3)}
PASSES = ("forward", "backward")  # a job: one dtype, one of these


def add_arguments(parser) -> None:
    parser.add_argument("--dtype", action="append", choices=DTYPES,
                        help="element type to compile for (repeatable; default float32)")
    parser.add_argument("--rednet-only", action="store_true",
                        help="only the versions RedNet-50's layers need, not those of groups under 5 channels")
    parser.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
                        help="processes compiling at once (default: one per core)")


def warmup_geometries() -> list:
    """One small geometry per distinct set of versions the policy picks for RedNet-50's layers at batch 1 and 8:
    the layer with one group of 16 channels, at batch 1 or 2 (checked to pick the full layer's versions)."""
    from involution.benchmarks.layers import REDNET_LAYERS, Layer, layer_geometry
    from involution.fast import cpu

    chosen = {}
    for layer in REDNET_LAYERS:
        for batch, small_batch in ((1, 1), (8, 2)):
            versions = tuple(cpu.versions_for(layer_geometry(layer, batch)).items())
            small = layer_geometry(Layer(layer.group_channels, layer.size, layer.stride, layer.kernel,
                                         layer.group_channels), small_batch)
            if tuple(cpu.versions_for(small).items()) != versions:  # keep the policy's pick: run the full layer
                small = layer_geometry(layer, batch)
            chosen.setdefault(versions, small)
    return list(chosen.values())


def warm(dtype: str, small: bool = True, passes=PASSES) -> list[str]:
    """Run the fast CPU ``passes`` ("forward", "backward": grad_x and grad_kernel) once on each of
    :func:`warmup_geometries` in ``dtype`` and, with ``small``, each of :data:`SMALL_VERSIONS` on a (1, 4, 8, 8) input
    with 3x3 taps; return the kernels that ran."""
    import numpy as np

    from involution.benchmarks.layers import random_inputs
    from involution.fast import cpu, cpu_forward_channels_last
    from involution.spec import check_geometry

    ran = set()
    for geometry in warmup_geometries():
        x, kernel, grad_out = random_inputs(geometry, dtype)
        hyper = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation)
        if "forward" in passes:
            cpu.involution2d(x, kernel, **hyper)
            # the layout of channels_last torch tensors (involution.torch.ops): the same values, position-major
            cpu_forward_channels_last.run(tuple(np.zeros(shape, dtype) for shape in
                                                cpu_forward_channels_last.shapes(geometry)), geometry)
            ran.add("forward channels-last")
        if "backward" in passes:
            cpu.involution2d_backward(grad_out, x, kernel, **hyper)
        ran.update(f"{kind} v{version}" for kind, version in cpu.versions_for(geometry).items()
                   if ("forward" if kind == "forward" else "backward") in passes)
    if small:
        x, kernel, grad_out = random_inputs(check_geometry((1, 4, 8, 8), (1, 2, 3, 3, 8, 8), 1, 1, 1), dtype)
        for version in SMALL_VERSIONS["forward"] if "forward" in passes else ():
            cpu.involution2d(x, kernel, padding=1, version=version)
            ran.add(f"forward v{version}")
        for version in SMALL_VERSIONS["backward"] if "backward" in passes else ():
            cpu.involution2d_backward(grad_out, x, kernel, padding=1, version=version)
            ran.update((f"grad_x v{version}", f"grad_kernel v{version}"))
    return sorted(ran)


def _timed_warm(dtype: str, small: bool, passes) -> tuple[float, list[str]]:
    started = time.perf_counter()
    ran = warm(dtype, small, passes)
    return time.perf_counter() - started, ran


def run(args) -> int:
    from involution.fast import runtime

    dtypes = list(dict.fromkeys(args.dtype or ["float32"]))
    # the backward jobs (two kernels per geometry) first: the processes end about together
    jobs = [(dtype, (kind,)) for kind in reversed(PASSES) for dtype in dtypes]
    started = time.perf_counter()
    if args.jobs == 1:
        results = [_timed_warm(dtype, not args.rednet_only, passes) for dtype, passes in jobs]
    else:  # fresh interpreters ("spawn"): no numba or threading state copied from this process
        with concurrent.futures.ProcessPoolExecutor(min(args.jobs, len(jobs)),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_timed_warm, *zip(*((dtype, not args.rednet_only, passes)
                                                          for dtype, passes in jobs))))
    for dtype in dtypes:
        mine = [result for (job_dtype, _), result in zip(jobs, results) if job_dtype == dtype]
        ran = sorted(set().union(*(kernels for _, kernels in mine)))
        seconds = " + ".join(f"{passes[0]} {elapsed:.1f} s" for (job_dtype, passes), (elapsed, _) in zip(jobs, results)
                             if job_dtype == dtype)
        print(f"{dtype}: the fast CPU kernels ready ({seconds}: {', '.join(ran)})")
    print(f"all ready in {time.perf_counter() - started:.1f} s wall, {min(args.jobs, len(jobs))} processes at once")
    folder = runtime.cache_folder() if runtime.CACHE else None
    print(f"cached in {runtime.display_path(folder)}" if folder else "not cached: no writable folder (set NUMBA_CACHE_DIR)")
    return 0
