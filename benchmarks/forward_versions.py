"""Numbered kernels of one pass side by side on RedNet-50's layers: each validated, then timed interleaved.

For every layer, batch and thread count: each public version's kernel of pass ``--kind`` (forward, grad_x or
grad_kernel: ``involution.fast.cpu.kernel_of(kind, version)`` called directly) is checked against the float64 NumPy
reference (rounding bounds of ``involution.conformance.tolerances``) and against the first version bitwise (the
channel-vector forwards v6 and v8 share one summation order; a difference is reported, not raised), then all versions are timed round-robin with
settling calls (``timing.interleaved_medians``), median of ``repeats`` rounds, dynamic threads off. On one thread the
clock is the calling thread's CPU time (``time.thread_time``: numba runs a one-thread region on the caller, and time
the scheduler gives other processes is not counted); on more threads, wall time. Output: the load average and a NumPy
float32 matmul's GFLOP/s ("sgemm", the machine's ceiling) before and after, one markdown table, GFLOP/s from
``Geometry.macs``, and per thread count and batch the geometric mean of each version's time over the first one's.

Run: ``python -m involution.benchmarks.forward_versions [--kind forward|grad_x|grad_kernel] [--versions 6 8] [--threads 1 2]
[--batch 1 8] [--layers 0 5] [--repeats 7]``
"""
from __future__ import annotations

import argparse
import os
from statistics import geometric_mean
import time

import numpy as np

from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry, layer_name, random_inputs
from involution.benchmarks.timing import interleaved_medians, sgemm_gflops


def run(versions=(6, 8), threads=(1, 2), batches=(1, 8), layers=REDNET_LAYERS, repeats: int = 7, log=print,
        kind: str = "forward"):
    """Validate and time ``versions`` of pass ``kind`` ("forward", "grad_x" or "grad_kernel"); one row per (threads, batch,
    layer), JSON-ready dicts."""
    import numba

    from involution.conformance import tolerances
    rows = []  # the kernels are called directly: on exactly the thread count of the row (no dynamic threads)
    for count in threads:
        numba.set_num_threads(count)
        clock = time.thread_time if count == 1 else time.perf_counter
        for batch in batches:
            for layer in layers:
                geometry = layer_geometry(layer, batch)
                x, kernel, grad_out = random_inputs(geometry, np.float32, seed=batch)
                calls = {version: kernel_call(kind, version, geometry, x, kernel, grad_out) for version in versions}
                results = {version: call() for version, call in calls.items()}
                for version, result in results.items():
                    tolerances.assert_matches_reference({RESULT_NAMES[kind]: result}, x, kernel, geometry,
                                                        f"{kind} v{version}, {layer_name(layer)} B{batch}", grad_out)
                first = results[versions[0]]
                bitwise = all(np.array_equal(first, out) for out in results.values())
                seconds = interleaved_medians(calls, dict.fromkeys(calls, repeats), clock=clock)
                row = {"layer": layer_name(layer), "batch": batch, "threads": count, "bitwise_equal": bitwise,
                       "ms": {v: 1e3 * s for v, s in seconds.items()},
                       "gflops_per_s": {v: 2 * geometry.macs / s / 1e9 for v, s in seconds.items()}}
                rows.append(row)
                log(format_row(row, versions))
    return rows


RESULT_NAMES = {"forward": "out", "grad_x": "grad_x", "grad_kernel": "grad_kernel"}


def kernel_call(kind: str, version: int, geometry, x, kernel, grad_out):
    """A call running pass ``kind`` of ``version`` (``cpu.kernel_of``, checked by ``cpu.check_version``) on the arrays
    into a result array it returns: the kernel alone, without the dispatcher's validation and allocation."""
    from involution.fast import cpu

    cpu.check_version(kind, version, geometry)
    function = cpu.kernel_of(kind, version).run
    hyper_parameters = (*geometry.stride, *geometry.padding, *geometry.dilation)
    if kind == "forward":
        arrays, result = (x, kernel), np.empty(geometry.out_shape, x.dtype)
    elif kind == "grad_x":
        arrays, result = (grad_out, kernel), np.empty(geometry.x_shape, x.dtype)
    else:
        arrays, result = (grad_out, x), np.empty(geometry.kernel_shape, x.dtype)

    def call():
        function(*arrays, result, *hyper_parameters)
        return result

    return call


def format_row(row: dict, versions) -> str:
    times = " | ".join(f"{row['ms'][v]:.3f} | {row['gflops_per_s'][v]:.1f}" for v in versions)
    ratios = " | ".join(f"{row['ms'][versions[0]] / row['ms'][v]:.2f}" for v in versions[1:])
    return (f"| {row['layer']} | {row['batch']} | {row['threads']} | {times} | {ratios} | "
            f"{'yes' if row['bitwise_equal'] else '**no**'} |")


def header(versions) -> str:
    first = versions[0]
    columns = " | ".join(f"v{v} ms | v{v} GFLOP/s" for v in versions)
    ratios = " | ".join(f"v{first} / v{v}" for v in versions[1:])
    rule = "|".join(["---"] + ["--:"] * (2 + 2 * len(versions) + len(versions) - 1) + [":-:"])
    return f"| layer | B | threads | {columns} | {ratios} | bitwise equal |\n|{rule}|"


def summary(rows: list[dict], versions) -> str:
    """Per (threads, batch): geometric means of GFLOP/s and of the first version's time over each other's."""
    lines = []
    for count in sorted({row["threads"] for row in rows}):
        for batch in sorted({row["batch"] for row in rows}):
            chosen = [row for row in rows if row["threads"] == count and row["batch"] == batch]
            if not chosen:
                continue
            rates = ", ".join(f"v{v} {geometric_mean([r['gflops_per_s'][v] for r in chosen]):.1f}" for v in versions)
            ratios = ", ".join(
                f"v{versions[0]} / v{v} {geometric_mean([r['ms'][versions[0]] / r['ms'][v] for r in chosen]):.2f}"
                for v in versions[1:])
            lines.append(f"{count} thread(s), batch {batch}: GFLOP/s {rates}; time ratio {ratios} "
                         f"(geometric means over {len(chosen)} layers)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(RESULT_NAMES), default="forward")
    parser.add_argument("--versions", type=int, nargs="+", default=[6, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--layers", type=int, nargs="+", default=list(range(len(REDNET_LAYERS))),
                        help="indices into benchmarks/layers.py's REDNET_LAYERS")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(machine_state())
    print(header(args.versions))
    rows = run(args.versions, args.threads, args.batch, [REDNET_LAYERS[i] for i in args.layers], args.repeats,
               kind=args.kind)
    print()
    print(summary(rows, args.versions))
    print(machine_state())
    return 0


def machine_state() -> str:
    """Load average and this moment's sgemm GFLOP/s: how busy the shared machine is."""
    return (f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}; "
            f"sgemm {sgemm_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    raise SystemExit(main())
