"""Compile the fast CPU kernels ahead of the first call and cache them on disk (numba's cache: once per machine).

For each ``--dtype``, runs the forward and both gradients once on one group of each of RedNet-50's involution
layers at batch 1 and 2: the kernel versions the dispatch policy (``involution.fast.cpu.versions_for``) picks for
those layers at any batch, compiled for the vector width of 16 channels per group; then, unless ``--rednet-only``,
the versions it picks for groups of fewer than 5 channels (2, 3 and 4: the conformance suite's shapes) on a small
geometry. Kernels already in the cache are loaded, not compiled again; a geometry the policy serves with another
version compiles that one on its first call.
"""
from __future__ import annotations

import time

DTYPES = ("float32", "float64")
# The versions the policy picks where the channel-vector kernels do not fit (cpu.choose_version): forward 4, 3 or 2,
# gradients 3 or 2 (version 4's gradients are version 3's).
SMALL_VERSIONS = {"forward": (2, 3, 4), "backward": (2, 3)}


def add_arguments(parser) -> None:
    parser.add_argument("--dtype", action="append", choices=DTYPES,
                        help="element type to compile for (repeatable; default float32)")
    parser.add_argument("--rednet-only", action="store_true",
                        help="only the versions RedNet-50's layers need, not those of groups under 5 channels")


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


def warm(dtype: str, small: bool = True) -> list[str]:
    """Run the fast CPU forward and backward once on each of :func:`warmup_geometries` in ``dtype`` and, with
    ``small``, each of :data:`SMALL_VERSIONS` on a (1, 4, 8, 8) input with 3x3 taps; return the kernels that ran."""
    from involution.benchmarks.layers import random_inputs
    from involution.fast import cpu
    from involution.spec import check_geometry

    ran = set()
    for geometry in warmup_geometries():
        x, kernel, grad_out = random_inputs(geometry, dtype)
        hyper = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation)
        cpu.involution2d(x, kernel, **hyper)
        cpu.involution2d_backward(grad_out, x, kernel, **hyper)
        ran.update(f"{kind} v{version}" for kind, version in cpu.versions_for(geometry).items())
    if small:
        x, kernel, grad_out = random_inputs(check_geometry((1, 4, 8, 8), (1, 2, 3, 3, 8, 8), 1, 1, 1), dtype)
        for version in SMALL_VERSIONS["forward"]:
            cpu.involution2d(x, kernel, padding=1, version=version)
            ran.add(f"forward v{version}")
        for version in SMALL_VERSIONS["backward"]:
            cpu.involution2d_backward(grad_out, x, kernel, padding=1, version=version)
            ran.update((f"grad_x v{version}", f"grad_kernel v{version}"))
    return sorted(ran)


def run(args) -> int:
    from involution.fast import runtime

    for dtype in args.dtype or ["float32"]:
        started = time.perf_counter()
        ran = warm(dtype, small=not args.rednet_only)
        print(f"{dtype}: the fast CPU kernels ready in {time.perf_counter() - started:.1f} s ({', '.join(ran)})")
    folder = runtime.cache_folder() if runtime.CACHE else None
    print(f"cached in {runtime.display_path(folder)}" if folder else "not cached: no writable folder (set NUMBA_CACHE_DIR)")
    return 0
