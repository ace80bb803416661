"""CPU benchmark of the involution op on RedNet-50's layers: fast numba kernels beside the NumPy reference, torch
unfold, the compiled tap loop (``torch.compile`` of :func:`involution.torch.taps.involution2d`) and the same-shape
depthwise ``conv2d`` (``groups=C``, same kernel size, stride, padding and dilation: the same multiply-adds with
spatially shared weights, the practical floor for this op).

Every involution implementation is first checked against the float64 NumPy reference (rounding bounds of
``involution.conformance.tolerances``), then timed in this one process with one thread count: the median of
``repeats`` calls, all implementations' calls interleaved round-robin (a shared machine's load falls alike on each),
each timed call after 20 ms of untimed calls of the same implementation (:func:`interleaved_medians`: no call pays
for the previous runtime's spinning threads; what that costs is measured beside it, :func:`after_medians`), forward
and backward (grad_x + grad_kernel; for the depthwise conv, grad_x and
grad_weight), GFLOP/s from ``Geometry.macs`` (2 FLOPs per multiply-add; backward twice the forward's), the
fraction of a float32 matmul measured in the same run ("sgemm"), and the peak memory a forward call adds
(resident-set high-water mark, glibc told to unmap every freed block above 64 KiB while it is measured; the timings
run with glibc keeping freed blocks below 32 MiB for reuse, as a long-running process's dynamic malloc thresholds
settle). Then the under-load check of the fast forward (a process spinning on one core,
:mod:`benchmarks.robustness`); the timing primitives are :mod:`benchmarks.timing`'s.

Run: ``python -m involution bench [--quick] [--batch 1 8] [--repeats 5] [--kernel-versions] [--json PATH]``
"""
from __future__ import annotations

import ctypes
import functools
import gc
import math
import os
import platform
import statistics

import numpy as np

from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry, layer_name, random_inputs
from involution.benchmarks.timing import after_medians, interleaved_medians, sgemm_gflops
from involution.spec import Geometry

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
# Timing: blocks below 32 MiB (glibc's largest dynamic mmap threshold on 64-bit) are reused from the heap, not mapped
# afresh per call, and the heap is not trimmed below 64 MiB of free top: the state a long-running process's dynamic
# thresholds reach. Memory measurement: blocks above 64 KiB are unmapped when freed, so the resident set is live data.
TIMING_MALLOC, MEASURING_MALLOC = (32 << 20, 64 << 20), (64 << 10, 128 << 10)


def set_malloc_thresholds(thresholds: tuple[int, int]) -> bool:
    """glibc's ``(mmap threshold, trim threshold)`` in bytes (:data:`TIMING_MALLOC` or :data:`MEASURING_MALLOC`);
    False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, thresholds[0]) and libc.mallopt(M_TRIM_THRESHOLD, thresholds[1]))
    except (OSError, AttributeError):
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def release_free_heap() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``); nothing where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(call) -> int | None:
    """Peak resident memory ``call()`` adds, result included (Linux: reset and read ``VmHWM``); else None. Freed
    blocks above 64 KiB are unmapped meanwhile (so the resident set is live data), then the timing thresholds are
    restored."""
    set_malloc_thresholds(MEASURING_MALLOC)
    try:
        gc.collect()
        release_free_heap()  # blocks freed while timing must not be reused unseen by the resident set
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets the high-water mark to the current resident set
            before = _status_kib("VmRSS")
        except OSError:
            return None
        result = call()
        extra = (_status_kib("VmHWM") - before) * 1024
        del result
        return extra
    finally:
        set_malloc_thresholds(TIMING_MALLOC)


def validate(geometry: Geometry, x, kernel, grad_out, implementations: dict) -> None:
    """Check every implementation's forward and both gradients against the float64 reference; raise on a miss."""
    from involution.conformance import tolerances

    for name, (forward, backward) in implementations.items():
        results = dict(zip(("out", "grad_x", "grad_kernel"), (forward(x, kernel), *backward(grad_out, x, kernel))))
        tolerances.assert_matches_reference(results, x, kernel, geometry, f"{name}, geometry {geometry}", grad_out)


def implementations(geometry: Geometry, versions=()) -> dict:
    """name -> ``(forward(x, kernel), backward(grad_out, x, kernel))`` on NumPy arrays, for timing."""
    import torch

    from involution.conformance import oracle
    from involution.fast import cpu
    from involution.reference import involution2d, involution2d_backward

    params = (geometry.stride, geometry.padding, geometry.dilation)

    def unfold_forward(x, kernel):
        with torch.no_grad():
            return oracle.involution2d(torch.from_numpy(x), torch.from_numpy(kernel), *params).numpy()

    def unfold_backward(grad_out, x, kernel):
        x_leaf, kernel_leaf = (torch.from_numpy(a).requires_grad_() for a in (x, kernel))
        out = oracle.involution2d(x_leaf, kernel_leaf, *params)
        return tuple(g.numpy() for g in torch.autograd.grad(out, (x_leaf, kernel_leaf), torch.from_numpy(grad_out)))

    def taps_forward(x, kernel):
        with torch.no_grad():
            return compiled_taps()(torch.from_numpy(x), torch.from_numpy(kernel), *params).numpy()

    def taps_backward(grad_out, x, kernel):
        x_leaf, kernel_leaf = (torch.from_numpy(a).requires_grad_() for a in (x, kernel))
        out = compiled_taps()(x_leaf, kernel_leaf, *params)
        return tuple(g.numpy() for g in torch.autograd.grad(out, (x_leaf, kernel_leaf), torch.from_numpy(grad_out)))

    result = {
        "fast-cpu": (lambda x, k: cpu.involution2d(x, k, *params),
                     lambda go, x, k: cpu.involution2d_backward(go, x, k, *params)),
        "reference": (lambda x, k: involution2d(x, k, *params),
                      lambda go, x, k: involution2d_backward(go, x, k, *params)),
        "unfold": (unfold_forward, unfold_backward),
        "taps-compiled": (taps_forward, taps_backward),
    }
    for version in versions:
        result[f"fast-cpu v{version}"] = (
            lambda x, k, v=version: cpu.involution2d(x, k, *params, version=v),
            lambda go, x, k, v=version: cpu.involution2d_backward(go, x, k, *params, version=v))
    return result


@functools.cache
def compiled_taps():
    """``torch.compile(involution.torch.taps.involution2d, dynamic=False)``: one graph per shape and grad mode
    (dynamo's recompile limit raised so that every benchmarked shape gets its own, and a run with more shapes than
    that fails instead of timing the eager fallback under the compiled loop's name; donated buffers off, so that its
    backward can be timed repeatedly on one recorded graph, ``retain_graph=True``)."""
    import torch
    import torch._dynamo
    import torch._functorch.config

    from involution.torch import taps

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    torch._functorch.config.donated_buffer = False
    return torch.compile(taps.involution2d, dynamic=False)


AUTOGRAD_BACKWARDS = {"unfold": "oracle", "taps-compiled": "taps"}  # timed as autograd's backward of one forward


def backward_call(geometry: Geometry, name: str, backward, inputs):
    """A zero-argument call of the backward pass alone; for the torch formulations, autograd's backward of a
    forward recorded once (``retain_graph``), so that the forward is not counted."""
    grad_out, x, kernel = inputs
    if name not in AUTOGRAD_BACKWARDS:
        return lambda: backward(grad_out, x, kernel)
    import torch

    from involution.conformance import oracle

    forward = oracle.involution2d if name == "unfold" else compiled_taps()
    x_leaf, kernel_leaf = (torch.from_numpy(a).requires_grad_() for a in (x, kernel))
    out = forward(x_leaf, kernel_leaf, geometry.stride, geometry.padding, geometry.dilation)
    grad = torch.from_numpy(grad_out)
    return lambda: torch.autograd.grad(out, (x_leaf, kernel_leaf), grad, retain_graph=True)


def depthwise_conv_calls(geometry: Geometry, x, grad_out):
    """``(forward, backward)`` zero-argument calls of ``torch.nn.functional.conv2d`` with ``groups=C`` and the
    layer's kernel size, stride, padding and dilation (backward: grad_x and grad_weight of one recorded forward):
    the same multiply-adds as the involution with one weight per channel and tap instead of one per group, tap
    and position."""
    import torch
    import torch.nn.functional as F

    weight = torch.randn(geometry.channels, 1, geometry.kernel_h, geometry.kernel_w,
                         generator=torch.Generator().manual_seed(0))
    params = dict(stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation,
                  groups=geometry.channels)
    x_tensor = torch.from_numpy(x)

    def forward():
        with torch.no_grad():
            return F.conv2d(x_tensor, weight, **params)

    x_leaf, weight_leaf = x_tensor.clone().requires_grad_(), weight.clone().requires_grad_()
    out = F.conv2d(x_leaf, weight_leaf, **params)
    grad = torch.from_numpy(grad_out)
    return forward, lambda: torch.autograd.grad(out, (x_leaf, weight_leaf), grad, retain_graph=True)


# Other processes' average busy cores during a row (runtime.FreeCores.others_busy) from which the row is flagged:
# torch's GNU OpenMP regions wait for a descheduled thread (a 2-thread depthwise conv took 32 ms instead of 2).
BUSY_WARNING = 0.25
def bench_layer(layer, batch: int, repeats: int, sgemm: float, versions=(), measure_memory: bool = True) -> dict:
    """Validate, then time every implementation on one layer at ``batch``, interleaved; one JSON-ready row."""
    geometry = layer_geometry(layer, batch)
    x, kernel, grad_out = random_inputs(geometry, np.float32, seed=batch)
    impls = implementations(geometry, versions)
    validate(geometry, x, kernel, grad_out, impls)
    row = {"layer": layer_name(layer), "batch": batch, "macs": geometry.macs,
           "input_bytes": x.nbytes, "output_bytes": x.itemsize * math.prod(geometry.out_shape),
           "kernel_bytes": kernel.nbytes}
    calls, counts = {}, {}
    slow_repeats = max(1, repeats // 3)  # the NumPy reference takes up to seconds per call
    for name, (forward, backward) in impls.items():
        calls[name, "forward"] = lambda forward=forward: forward(x, kernel)
        calls[name, "backward"] = backward_call(geometry, name, backward, (grad_out, x, kernel))
        counts[name, "forward"] = counts[name, "backward"] = (
            slow_repeats if name in ("reference", "fast-cpu v1") else repeats)
    calls["depthwise-conv", "forward"], calls["depthwise-conv", "backward"] = depthwise_conv_calls(geometry, x,
                                                                                                   grad_out)
    counts["depthwise-conv", "forward"] = counts["depthwise-conv", "backward"] = repeats
    seconds = interleaved_medians(calls, counts)
    after = after_medians({"fast-cpu after torch": (calls["depthwise-conv", "forward"], calls["fast-cpu", "forward"]),
                           "taps-compiled after fast": (calls["fast-cpu", "forward"],
                                                        calls["taps-compiled", "forward"])}, repeats)
    for name in (*impls, "depthwise-conv"):
        row[name] = rates(geometry, 1e3 * seconds[name, "forward"], 1e3 * seconds[name, "backward"], sgemm)
        if measure_memory and name in impls:
            row[name]["forward_peak_extra_bytes"] = peak_extra_bytes(lambda: impls[name][0](x, kernel))
    row["fast-cpu"]["forward_after_torch_ms"] = 1e3 * after["fast-cpu after torch"]
    row["taps-compiled"]["forward_after_fast_ms"] = 1e3 * after["taps-compiled after fast"]
    for name in ("reference", "unfold", "taps-compiled", "depthwise-conv"):
        for direction in ("forward", "backward"):
            row[f"{direction}_speedup_vs_{name}"] = row[name][f"{direction}_ms"] / row["fast-cpu"][f"{direction}_ms"]
    return row


def rates(geometry: Geometry, forward_ms: float, backward_ms: float, sgemm: float) -> dict:
    """Milliseconds, GFLOP/s (forward ``2 * macs``, backward twice that) and their fractions of ``sgemm``."""
    forward_gflops, backward_gflops = 2 * geometry.macs / forward_ms / 1e6, 4 * geometry.macs / backward_ms / 1e6
    return {"forward_ms": forward_ms, "backward_ms": backward_ms, "forward_gflops": forward_gflops,
            "backward_gflops": backward_gflops, "forward_fraction_of_sgemm": forward_gflops / sgemm,
            "backward_fraction_of_sgemm": backward_gflops / sgemm}


COMPARED = ("unfold", "reference", "taps-compiled", "depthwise-conv")


def summarize(rows: list[dict], sgemm: float) -> dict:
    """Per batch: geometric means over the layers of the speedups (other's time / fast time) and of the fast
    GFLOP/s, the smallest speedup over the compiled tap loop, and the memory check."""
    summary = {}
    for batch in sorted({row["batch"] for row in rows}):
        chosen = [row for row in rows if row["batch"] == batch]
        forward_gflops = statistics.geometric_mean(row["fast-cpu"]["forward_gflops"] for row in chosen)
        summary[f"batch {batch}"] = {
            **{f"{direction}_speedup_vs_{name}": statistics.geometric_mean(
                row[f"{direction}_speedup_vs_{name}"] for row in chosen)
               for name in COMPARED for direction in ("forward", "backward")},
            "forward_min_speedup_vs_taps-compiled": min(row["forward_speedup_vs_taps-compiled"] for row in chosen),
            "forward_after_torch_over_settled": statistics.geometric_mean(
                row["fast-cpu"]["forward_after_torch_ms"] / row["fast-cpu"]["forward_ms"] for row in chosen),
            "taps-compiled_forward_after_fast_over_settled": statistics.geometric_mean(
                row["taps-compiled"]["forward_after_fast_ms"] / row["taps-compiled"]["forward_ms"] for row in chosen),
            # as between a PyTorch model's ops: the fast op right after a torch op, the tap loop among its own
            "forward_speedup_vs_taps-compiled_fast_after_torch": statistics.geometric_mean(
                row["taps-compiled"]["forward_ms"] / row["fast-cpu"]["forward_after_torch_ms"] for row in chosen),
            "forward_gflops": forward_gflops,
            "forward_fraction_of_sgemm": forward_gflops / sgemm,
            "backward_gflops": statistics.geometric_mean(row["fast-cpu"]["backward_gflops"] for row in chosen),
            "forward_memory_within_input_plus_output": all(
                row["fast-cpu"].get("forward_peak_extra_bytes") is not None
                and row["fast-cpu"]["forward_peak_extra_bytes"] <= row["input_bytes"] + row["output_bytes"]
                for row in chosen),
        }
    return summary


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def format_rows(rows: list[dict], versions=()) -> str:
    """The per-layer table: the fast op's milliseconds, GFLOP/s and % of sgemm, then each other implementation's
    milliseconds and "x" = its time / fast time (above 1: fast is faster; for the depthwise conv, the floor, at
    most about 1); forward peak memory (MiB)."""
    others = (("taps", "taps-compiled"), ("dw", "depthwise-conv"), ("unf", "unfold"), ("ref", "reference"))
    header = (f"{'layer':>14s} {'B':>2s} | " + " | ".join(
        f"{way + ' ms':>7s} {'GF/s':>5s} {'%sg':>3s} " + " ".join(f"{short:>7s} {'x':>5s}" for short, _ in others)
        for way in ("fwd", "bwd")) + f" | {'in+out':>6s} {'fast':>5s} {'unf':>6s} MiB")
    lines = [header, "-" * len(header)]
    for row in rows:
        fast = row["fast-cpu"]
        cells = [f"{row['layer']:>14s} {row['batch']:>2d} |"]
        for way in ("forward", "backward"):
            cells.append(f"{fast[way + '_ms']:7.2f} {fast[way + '_gflops']:5.1f} "
                         f"{100 * fast[way + '_fraction_of_sgemm']:3.0f}")
            cells.extend(f"{row[name][way + '_ms']:7.2f} {row[f'{way}_speedup_vs_{name}']:5.2f}" for _, name in others)
            cells.append("|")
        fast_peak, unfold_peak = fast.get("forward_peak_extra_bytes"), row["unfold"].get("forward_peak_extra_bytes")
        cells.append(f"{_mib(row['input_bytes'] + row['output_bytes']):>6s} {_mib(fast_peak):>5s} "
                     f"{_mib(unfold_peak):>6s}")
        lines.append(" ".join(cells))
        for version in versions:
            timing = row[f"fast-cpu v{version}"]
            lines.append(f"{'v' + str(version):>17s} | {timing['forward_ms']:7.2f} {timing['forward_gflops']:5.1f} "
                         f"{100 * timing['forward_fraction_of_sgemm']:3.0f} {'':55s}| {timing['backward_ms']:7.2f} "
                         f"{timing['backward_gflops']:5.1f} {100 * timing['backward_fraction_of_sgemm']:3.0f}")
    return "\n".join(lines)


def machine() -> dict:
    """CPU model, cores and the thread counts used."""
    import numba
    import torch

    from involution.fast import runtime

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": numba.threading_layer(), "dynamic_threads": runtime.DYNAMIC_THREADS,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "numba": numba.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


def run(batches=(1, 8), repeats: int = 5, layers=REDNET_LAYERS, versions=(), robustness_checks: bool = True,
        log=print) -> dict:
    """Validate and time every layer at every batch size, then (``robustness_checks``) the under-load
    check of the fast forward; return rows, summary, sgemm, machine and the checks. The rows are timed with the fast
    op's dynamic threads off (torch's thread count is fixed too) and record how many cores other processes kept
    busy meanwhile (``others_busy_cores``); the under-load check runs with the dynamic threads as set."""
    import numba
    import torch

    from involution.benchmarks import robustness
    from involution.fast import runtime

    torch.set_num_threads(numba.get_num_threads())  # same thread count for every implementation
    set_malloc_thresholds(TIMING_MALLOC)
    sgemm = sgemm_gflops()
    log(f"numpy float32 matmul 1024^3: {sgemm:.1f} GFLOP/s (this run's ceiling; %sg below is a fraction of it)")
    rows = []
    with runtime.dynamic_threads(False):  # the fast op on torch's thread count too
        for batch in batches:
            for layer in layers:
                before = runtime.FREE_CORES.read()
                rows.append(bench_layer(layer, batch, repeats, sgemm, versions))
                after = runtime.FREE_CORES.read()
                rows[-1]["others_busy_cores"] = (None if before is None or after is None
                                                 else runtime.FreeCores.others_busy(before, after))
                log("\n".join(format_rows(rows[-1:], versions).splitlines()[2:]))
                if (rows[-1]["others_busy_cores"] or 0) >= BUSY_WARNING:
                    log(f"  other processes kept {rows[-1]['others_busy_cores']:.1f} cores busy during this row: "
                        f"not a quiet-machine comparison")
    result = {"machine": machine(), "load_average": os.getloadavg(), "sgemm_gflops": sgemm, "rows": rows,
              "timed_with_dynamic_threads": False, "summary": summarize(rows, sgemm)}
    if robustness_checks:
        result["under_load"] = robustness.under_load(layers, log=log)
    return result
