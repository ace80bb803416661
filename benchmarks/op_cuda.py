"""GPU benchmark of the involution op on RedNet-50's layers: numba.cuda kernels beside the CPU benchmark's anchors.

Implementations: ``fast-cuda`` (the package's front door, ``involution.fast.cuda``, on device arrays: the version
policy, validation and allocation included), each numbered kernel (``numba v1``, ``numba v2``), and on CUDA tensors
torch unfold, the compiled tap loop (``torch.compile`` of :func:`involution.torch.taps.involution2d`, as
``benchmarks/op_cpu.py``) and the same-shape depthwise ``conv2d`` (``groups=C``: the same multiply-adds with
spatially shared weights, the practical floor). Every involution implementation is first checked against the NumPy
reference (at batch 2), then timed with CUDA events: the median of ``--repeats`` calls after ``--warmup``, forward
and backward (grad_x + grad_kernel; torch: autograd's backward alone, of one forward recorded before the timing),
with GFLOP/s (2 FLOPs per multiply-add, ``Geometry.macs`` per pass), GB/s (the bytes each pass must read and write
at least) and, for each torch anchor, its time divided by ``fast-cuda``'s (above 1: the fast op is faster). v1
follows the official CUDA kernel's strategy (one thread per result element); a CuPy port of that kernel is not part
of this benchmark. Without a CUDA GPU (or under numba's simulator) it exits with status 2 and one line on stderr.

Run: ``python -m involution bench --backend fast-cuda [--batch 32 1] [--dtype float32] [--json results.json]``
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import numpy as np

from involution.arguments import int_at_least, output_file, positive_int
from involution.benchmarks.layers import REDNET_LAYERS, Layer, layer_geometry, layer_name, random_inputs
from involution.spec import Geometry

FAST = "fast-cuda"
ANCHORS = ("torch unfold", "torch compiled taps", "torch depthwise conv")  # timed against FAST
NOT_INVOLUTION = ("torch depthwise conv",)  # an anchor with other weights: timed, not validated


def traffic_bytes(geometry: Geometry, itemsize: int, direction: str) -> int:
    """Bytes a pass must move at least: forward reads x, kernel and writes out; backward reads grad_out, x,
    kernel and writes grad_x, grad_kernel."""
    x, kernel, out = (int(np.prod(shape)) for shape in (geometry.x_shape, geometry.kernel_shape, geometry.out_shape))
    return itemsize * (x + kernel + out if direction == "forward" else out + 2 * x + 2 * kernel)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options on ``parser``."""
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[32, 1], help="batch sizes (default 32 1)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default float32")
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--warmup", type=int_at_least(0), default=3, help="untimed calls first (default 3)")
    parser.add_argument("--json", metavar="PATH", type=output_file, help="also write the results as JSON to PATH")
    parser.add_argument("--plan", action="store_true",
                        help="print each layer's v2 launch plan, MACs and minimum traffic (no GPU needed) and exit")


def main(argv=None) -> int:
    """Parse ``argv``, check for a GPU, validate and time every layer; return the exit status."""
    parser = argparse.ArgumentParser(prog="involution bench --backend fast-cuda", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args) -> int:
    """Benchmark with parsed ``args``; 2 with one line on stderr when there is no CUDA GPU."""
    if args.plan:
        print(json.dumps(plans(args.batch, np.dtype(args.dtype).itemsize), indent=1))
        return 0
    missing = _no_gpu_reason()
    if missing:
        print(f"involution bench --backend fast-cuda: no CUDA GPU is available: {missing}", file=sys.stderr)
        return 2
    import torch
    from numba import cuda

    device = cuda.get_current_device()
    results = {
        "device": device.name.decode() if isinstance(device.name, bytes) else str(device.name),
        "compute_capability": list(device.compute_capability),
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.cuda.is_available(),
        "dtype": args.dtype, "repeats": args.repeats, "warmup": args.warmup,
        "cupy_official_port": "skipped: not part of this benchmark (v1 follows the official kernel's strategy)",
        "rows": [],
    }
    if not torch.cuda.is_available():
        print("involution bench --backend fast-cuda: torch has no CUDA here (a CPU build?): the torch anchors "
              "(unfold, compiled taps, depthwise conv) are skipped", file=sys.stderr)
    for batch in args.batch:
        for layer in REDNET_LAYERS:
            geometry = layer_geometry(layer, batch)
            validate(layer, args.dtype)
            for row in time_layer(geometry, args.dtype, args.repeats, args.warmup):
                row = {"layer": layer_name(layer), "batch": batch, **row}
                results["rows"].append(row)
                print(f"{row['layer']:>16s} B{batch:<3d} {row['direction']:8s} {row['impl']:20s} "
                      f"{row['median_ms']:9.3f} ms {row['gflops']:8.1f} GFLOP/s {row['gbps']:7.1f} GB/s"
                      + (f"  {row['over_fast']:.2f}x fast-cuda's time" if "over_fast" in row else ""))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    print(json.dumps(results))
    return 0


def plans(batches, itemsize: int) -> list[dict]:
    """Per layer and batch: MACs, the minimum bytes each pass moves, and the v2 block of each kernel."""
    from involution.fast.cuda_kernels import plan_tiles

    rows = []
    for batch in batches:
        for layer in REDNET_LAYERS:
            geometry = layer_geometry(layer, batch)
            rows.append({"layer": layer_name(layer), "batch": batch, "macs": geometry.macs,
                         **{f"{direction}_bytes": traffic_bytes(geometry, itemsize, direction)
                            for direction in ("forward", "backward")},
                         **{kind: vars(plan_tiles(kind, geometry, itemsize))
                            for kind in ("forward", "grad_x", "grad_kernel")}})
    return rows


def _no_gpu_reason() -> str | None:
    """Why the kernels cannot be timed here (no GPU, or numba's simulator), or None."""
    try:
        from involution.fast import cuda as fast_cuda
    except ImportError as error:
        return str(error)
    if fast_cuda.is_simulator():
        return "numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1) and cannot time kernels"
    return None


def validate(layer: Layer, dtype: str) -> None:
    """Check every implementation against the NumPy reference on ``layer`` at batch 2; raise on a mismatch."""
    from involution.conformance import tolerances

    geometry = layer_geometry(layer, batch=2)
    x, kernel, grad_out = random_inputs(geometry, dtype, seed=1)
    for impl, (forward, backward) in _implementations(geometry, dtype).items():
        if impl in NOT_INVOLUTION:
            continue
        inputs = _on_device(impl, x, kernel, grad_out)
        got = [_to_host(result) for result in (*forward(*inputs), *backward(*inputs))]
        tolerances.assert_matches_reference(dict(zip(("out", "grad_x", "grad_kernel"), got)), x, kernel, geometry,
                                            f"{impl}, layer {layer_name(layer)}, batch 2, {dtype}", grad_out)


def time_layer(geometry: Geometry, dtype: str, repeats: int, warmup: int) -> list[dict]:
    """Median time, GFLOP/s and GB/s of each implementation's forward and backward on ``geometry``."""
    x, kernel, grad_out = random_inputs(geometry, dtype)
    rows = []
    for impl, (forward, backward) in _implementations(geometry, dtype).items():
        inputs = _on_device(impl, x, kernel, grad_out)
        # torch: autograd's backward alone, of one forward recorded here (as benchmarks/op_cpu.py times it)
        backward_call = backward(*inputs, recorded=True) if impl.startswith("torch") else lambda: backward(*inputs)
        for direction, call in (("forward", lambda: forward(*inputs)), ("backward", backward_call)):
            milliseconds = _median_ms(impl, call, repeats, warmup)
            flops = 2 * geometry.macs * (1 if direction == "forward" else 2)
            rows.append({"direction": direction, "impl": impl, "median_ms": milliseconds,
                         "gflops": flops / milliseconds / 1e6,
                         "gbps": traffic_bytes(geometry, np.dtype(dtype).itemsize, direction) / milliseconds / 1e6})
    fast = {row["direction"]: row["median_ms"] for row in rows if row["impl"] == FAST}
    for row in rows:
        if row["impl"] in ANCHORS:
            row["over_fast"] = row["median_ms"] / fast[row["direction"]]
    return rows


def _implementations(geometry: Geometry, dtype: str) -> dict:
    """name -> (forward(x, kernel, grad_out), backward(x, kernel, grad_out)) on device inputs."""
    from numba import cuda

    from involution.fast import cuda as fast_cuda
    from involution.fast import cuda_kernels

    params = (geometry.stride, geometry.padding, geometry.dilation)
    implementations = {FAST: (lambda x, kernel, grad_out: (fast_cuda.involution2d(x, kernel, *params),),
                              lambda x, kernel, grad_out: fast_cuda.involution2d_backward(grad_out, x, kernel,
                                                                                          *params))}
    for version in cuda_kernels.VERSIONS:
        out = cuda.device_array(geometry.out_shape, dtype)
        grad_x = cuda.device_array(geometry.x_shape, dtype)
        grad_kernel = cuda.device_array(geometry.kernel_shape, dtype)

        def forward(x, kernel, grad_out, version=version, out=out):
            cuda_kernels.forward(x, kernel, out, geometry, version=version)
            return (out,)

        def backward(x, kernel, grad_out, version=version, grad_x=grad_x, grad_kernel=grad_kernel):
            cuda_kernels.grad_x(grad_out, kernel, grad_x, geometry, version=version)
            cuda_kernels.grad_kernel(grad_out, x, grad_kernel, geometry, version=version)
            return grad_x, grad_kernel

        implementations[f"numba v{version}"] = (forward, backward)
    import torch

    if torch.cuda.is_available():
        from involution.benchmarks.op_cpu import compiled_taps
        from involution.conformance import oracle

        implementations["torch unfold"] = _torch_involution(geometry, oracle.involution2d)
        implementations["torch compiled taps"] = _torch_involution(geometry, compiled_taps())
        implementations["torch depthwise conv"] = _torch_depthwise_conv(geometry, dtype)
    return implementations


def _torch_involution(geometry: Geometry, involution2d):
    """``involution2d(x, kernel, stride, padding, dilation)`` (a torch formulation) as forward and autograd backward
    on CUDA tensors."""
    import torch

    params = (geometry.stride, geometry.padding, geometry.dilation)

    def forward(x, kernel, grad_out):
        with torch.no_grad():
            return (involution2d(x, kernel, *params),)

    def backward(x, kernel, grad_out, recorded: bool = False):
        """Both gradients of a fresh forward; ``recorded``: a zero-argument call of autograd's backward alone
        (the forward recorded once, ``retain_graph``), for timing."""
        x, kernel = x.detach().requires_grad_(), kernel.detach().requires_grad_()
        return _gradients(involution2d(x, kernel, *params), (x, kernel), grad_out, recorded)

    return forward, backward


def _torch_depthwise_conv(geometry: Geometry, dtype: str):
    """``conv2d`` with ``groups=C`` and the layer's kernel size, stride, padding and dilation on CUDA tensors (its
    inputs: ``x`` and a fixed random weight; backward: grad_x and grad_weight), the CPU benchmark's floor anchor."""
    import torch
    import torch.nn.functional as F

    weight = torch.randn(geometry.channels, 1, geometry.kernel_h, geometry.kernel_w,
                         generator=torch.Generator().manual_seed(0), dtype=getattr(torch, dtype)).cuda()
    params = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation,
                  groups=geometry.channels)

    def forward(x, kernel, grad_out):
        with torch.no_grad():
            return (F.conv2d(x, weight, **params),)

    def backward(x, kernel, grad_out, recorded: bool = False):
        """grad_x and grad_weight of a fresh forward; ``recorded``: a zero-argument call of the backward alone."""
        x, weight_leaf = x.detach().requires_grad_(), weight.detach().requires_grad_()
        return _gradients(F.conv2d(x, weight_leaf, **params), (x, weight_leaf), grad_out, recorded)

    return forward, backward


def _gradients(out, leaves, grad_out, recorded: bool):
    """autograd's gradients of ``out`` with respect to ``leaves``; ``recorded``: instead a zero-argument call that
    computes them (``retain_graph``, so that the one recorded forward's backward can be timed repeatedly)."""
    import torch

    if recorded:
        return lambda: torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    return torch.autograd.grad(out, leaves, grad_out)


def _on_device(impl: str, *arrays):
    """Copies of ``arrays`` on the GPU: torch tensors for the torch implementation, numba device arrays else."""
    if impl.startswith("torch"):
        import torch

        return tuple(torch.from_numpy(array).cuda() for array in arrays)
    from numba import cuda

    return tuple(cuda.to_device(array) for array in arrays)


def _to_host(result) -> np.ndarray:
    """A torch tensor or numba device array copied to an ndarray."""
    return result.detach().cpu().numpy() if hasattr(result, "detach") else result.copy_to_host()


def _median_ms(impl: str, call, repeats: int, warmup: int) -> float:
    """Median milliseconds of ``call()`` over ``repeats`` calls, each timed with CUDA events."""
    if impl.startswith("torch"):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize = torch.cuda.synchronize
    else:
        from numba import cuda

        start, end = cuda.event(), cuda.event()
        synchronize = cuda.synchronize
    for _ in range(warmup):
        call()
    synchronize()
    times = []
    for _ in range(repeats):
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
