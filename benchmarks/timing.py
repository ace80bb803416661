"""Timing primitives of the benchmarks, in one place: timed calls, settling, interleaved and after-another medians,
and the machine's float32 matmul rate ("sgemm"), the ceiling every GFLOP/s figure is compared with."""
from __future__ import annotations

import statistics
import time

import numpy as np


def interleaved_times(calls: dict, rounds: int, warmup: int = 1) -> dict:
    """key -> the seconds of each of ``rounds`` timed calls of ``calls[key]()``; one call of each key per round,
    in order, after ``warmup`` untimed rounds. No settling between calls: in a network the op always runs right
    after torch's ops, so each call is timed as a model runs."""
    times = {key: [] for key in calls}
    for round_index in range(warmup + rounds):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            if round_index >= warmup:
                times[key].append(time.perf_counter() - started)
    return times


def call_seconds(call, count: int, warmup: int = 1) -> list[float]:
    """Wall times of ``count`` calls of ``call()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def settle_calls(call, seconds: float = 0.05) -> None:
    """Untimed calls of ``call`` for ``seconds`` (at least one): the previous runtime's spinning threads (torch's, or
    numba's at another thread count) go idle before the timed calls (docs/performance.md, "Timing protocol")."""
    settled_at = time.perf_counter() + seconds
    call()
    while time.perf_counter() < settled_at:
        call()


def median_seconds(call, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    return statistics.median(call_seconds(call, repeats, warmup))


def matmul_gflops(a, b, repeats: int) -> float:
    """GFLOP/s of ``a @ b`` for square ``size x size`` operands (2 size^3 FLOPs), median of ``repeats`` calls."""
    return 2 * a.shape[0] ** 3 / median_seconds(lambda: a @ b, repeats, warmup=2) / 1e9


def sgemm_gflops(size: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of NumPy's float32 ``size x size`` matmul (2 size^3 FLOPs): the machine's practical ceiling."""
    a, b = (np.random.default_rng(seed).standard_normal((size, size), dtype=np.float32) for seed in (0, 1))
    return matmul_gflops(a, b, repeats)


def torch_sgemm_gflops(size: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of torch's float32 ``size x size`` matmul on torch's threads (``torch.get_num_threads()``, which
    NumPy's BLAS does not follow): the ceiling beside torch networks."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    return matmul_gflops(a, b, repeats)


SETTLE_SECONDS = 0.02  # untimed calls of an implementation before each of its timed calls (see interleaved_medians)


def interleaved_medians(calls: dict, counts: dict, clock=time.perf_counter, settle: float = SETTLE_SECONDS) -> dict:
    """name -> median seconds of ``calls[name]()`` over ``counts[name]`` timed calls, in rounds (one timed call of
    each per round, so that a shared machine's load falls alike on every implementation). Before each timed call,
    untimed calls of the same implementation for at least ``settle`` seconds (at least one call); with ``settle``
    0, one warm-up round instead.

    Why settle: after a parallel region, torch's OpenMP threads keep spinning for milliseconds (GNU OpenMP's
    default wait policy) and numba's TBB worker for a shorter while, so a call made right after another runtime's
    call shares a core with that runtime's idle threads (docs/performance.md, "Timing protocol"). Settling times
    each implementation in the steady state of its own repeated calls, as ``timeit`` does. ``clock``: wall time by
    default; ``time.thread_time`` (this thread's CPU time) for one-thread kernels.
    """
    if not settle:
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for round_index in range(max(counts.values())):
        for name, call in calls.items():
            if round_index >= counts[name]:
                continue
            if settle:
                settle_calls(call, settle)
            started = clock()
            call()
            times[name].append(clock() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def after_medians(pairs: dict, repeats: int) -> dict:
    """name -> median seconds of ``second()`` timed right after an untimed ``first()``, ``pairs[name] = (first,
    second)``, over ``repeats`` rounds (round-robin): what a call costs when another runtime has just run, as
    in a model whose ops alternate (the settled medians of :func:`interleaved_medians` leave this out)."""
    times = {name: [] for name in pairs}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (first, second) in pairs.items():
            first()
            started = time.perf_counter()
            second()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values[1:]) for name, values in times.items()}
