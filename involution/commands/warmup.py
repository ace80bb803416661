"""Compile the fast CPU kernels ahead of the first call and cache them on disk (numba's cache: once per machine).

For each ``--dtype``, runs the forward and both gradients once on one group of each of RedNet-50's involution
layers at batch 1 and 2: the kernel versions the dispatch policy (``involution.fast.cpu.versions_for``) picks for
those layers at any batch, compiled for the vector width of 16 channels per group. Kernels already in the cache
are loaded, not compiled again; a geometry the policy serves with another version compiles that one on its first
call.
"""
from __future__ import annotations

import time

DTYPES = ("float32", "float64")


def add_arguments(parser) -> None:
    parser.add_argument("--dtype", action="append", choices=DTYPES,
                        help="element type to compile for (repeatable; default float32)")


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


def warm(dtype: str) -> list[dict[str, int]]:
    """Run the fast CPU forward and backward once on each of :func:`warmup_geometries` in ``dtype``; return the
    versions that ran."""
    from involution.benchmarks.layers import random_inputs
    from involution.fast import cpu

    ran = []
    for geometry in warmup_geometries():
        x, kernel, grad_out = random_inputs(geometry, dtype)
        hyper = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation)
        cpu.involution2d(x, kernel, **hyper)
        cpu.involution2d_backward(grad_out, x, kernel, **hyper)
        ran.append(cpu.versions_for(geometry))
    return ran


def run(args) -> int:
    from involution.fast import runtime

    for dtype in args.dtype or ["float32"]:
        started = time.perf_counter()
        ran = warm(dtype)
        names = sorted({f"{kind} v{version}" for versions in ran for kind, version in versions.items()})
        print(f"{dtype}: the fast CPU kernels ready in {time.perf_counter() - started:.1f} s ({', '.join(names)})")
    folder = runtime.cache_folder() if runtime.CACHE else None
    print(f"cached in {folder}" if folder else "not cached: no writable folder (set NUMBA_CACHE_DIR)")
    return 0
