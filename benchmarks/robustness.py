"""Robustness checks of the fast CPU forward, run by ``python -m involution bench``: latency while another process
spins on one core, calls from a ``fork``-started ``multiprocessing`` Pool, and calls from several Python threads.

* Under load: per layer at batch 1, ``calls`` timed calls on a quiet machine, then again while a child process
  spins on the last core (pinned with ``os.sched_setaffinity``, bounded in time, killed after); the check is the
  loaded 90th percentile (``statistics.quantiles``) against the quiet median, target at most 2x.
* Fork: after this process has run the op (the benchmark has), a Pool with the 'fork' start method runs the op in
  its children; with GNU OpenMP as numba's threading layer the children are terminated and the Pool hangs, so
  the result is awaited with a timeout and the Pool terminated after.
* Threads: several Python threads call the op at once; every result must equal the single-threaded call's.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from involution.benchmarks.layers import layer_geometry, layer_name, random_inputs

SPIN = ("import os, time\nos.sched_setaffinity(0, {{{core}}})\nend = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n    pass\n")


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


def settle(call, seconds: float = 0.05) -> None:
    """Untimed calls of ``call`` for ``seconds`` (at least one): the previous runtime's spinning threads (torch's, or
    numba's at another thread count) go idle before the timed calls (docs/performance.md, "Timing protocol")."""
    settled_at = time.perf_counter() + seconds
    call()
    while time.perf_counter() < settled_at:
        call()


def under_load(layers, batch: int = 1, calls: int = 30, spin_seconds: float = 300, log=print) -> dict:
    """Quiet median and loaded 90th percentile of the fast forward on every layer; one JSON-ready dict."""
    import numba

    from involution.fast import cpu, runtime

    timed = []
    for layer in layers:
        geometry = layer_geometry(layer, batch)
        x, kernel, _ = random_inputs(geometry, np.float32, seed=batch)
        params = (geometry.stride, geometry.padding, geometry.dilation)
        timed.append((layer, lambda x=x, kernel=kernel, params=params: cpu.involution2d(x, kernel, *params)))
    quiet, quiet_alone = phase(timed, calls)
    threads_quiet = runtime.FREE_CORES.threads(numba.get_num_threads()) if runtime.DYNAMIC_THREADS else None
    core = (os.cpu_count() or 1) - 1
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(core=core, seconds=spin_seconds)])
    try:
        time.sleep(0.5)  # let it start spinning, and the dynamic threads see it (they sample every 0.1 s)
        loaded, loaded_alone = phase(timed, calls)
        threads_under_load = runtime.FREE_CORES.threads(numba.get_num_threads()) if runtime.DYNAMIC_THREADS else None
        still_spinning = spinner.poll() is None
    finally:
        spinner.kill()
        spinner.wait()
    rows = []
    for name in quiet:
        quiet_median, loaded_p90 = statistics.median(quiet[name]), statistics.quantiles(loaded[name], n=10)[-1]
        alone = statistics.median(quiet_alone[name]), statistics.median(loaded_alone[name])
        rows.append({"layer": name, "batch": batch, "quiet_median_ms": 1e3 * quiet_median,
                     "loaded_median_ms": 1e3 * statistics.median(loaded[name]), "loaded_p90_ms": 1e3 * loaded_p90,
                     "p90_over_quiet_median": loaded_p90 / quiet_median,
                     "one_thread_quiet_median_ms": 1e3 * alone[0], "one_thread_loaded_median_ms": 1e3 * alone[1],
                     "one_thread_slowdown": alone[1] / alone[0]})
        log(f"under load {name:>14s} B{batch}: quiet median {rows[-1]['quiet_median_ms']:6.2f} ms, loaded p90 "
            f"{rows[-1]['loaded_p90_ms']:6.2f} ms ({rows[-1]['p90_over_quiet_median']:.2f}x); one thread: "
            f"{rows[-1]['one_thread_loaded_median_ms']:6.2f} ms loaded, {rows[-1]['one_thread_slowdown']:.2f}x quiet")
    worst = max(row["p90_over_quiet_median"] for row in rows)
    one_thread_slowdown = statistics.geometric_mean(row["one_thread_slowdown"] for row in rows)
    log(f"under load: worst p90 / quiet median {worst:.2f} (target <= 2); a lone thread's loaded / quiet median "
        f"{one_thread_slowdown:.2f} (geometric mean: about 1 where the cores do not contend, up to 2 where they do)")
    if runtime.DYNAMIC_THREADS:
        log(f"under load: dynamic threads chose {threads_quiet} (quiet) and {threads_under_load} (loaded) of "
            f"{numba.get_num_threads()} threads per call")
    return {"calls": calls, "spinning_core": core, "spinner_ran_throughout": still_spinning, "rows": rows,
            "threads_quiet": threads_quiet, "threads_under_load": threads_under_load,
            "dynamic_threads": runtime.DYNAMIC_THREADS, "one_thread_slowdown": one_thread_slowdown,
            "worst_p90_over_quiet_median": worst, "within_2x": worst <= 2}


def phase(timed, calls: int) -> tuple[dict, dict]:
    """Per layer: the wall times of ``calls`` calls as configured, then of ``calls`` calls on one numba thread (the
    dynamic threads off): how fast a lone thread runs in this phase, whatever the thread policy."""
    import numba

    from involution.fast import runtime

    configured, alone = {}, {}
    for layer, call in timed:
        settle(call)
        configured[layer_name(layer)] = call_seconds(call, calls)
        threads, dynamic = numba.get_num_threads(), runtime.DYNAMIC_THREADS
        numba.set_num_threads(1)
        runtime.DYNAMIC_THREADS = False
        try:
            settle(call)
            alone[layer_name(layer)] = call_seconds(call, calls)
        finally:
            numba.set_num_threads(threads)
            runtime.DYNAMIC_THREADS = dynamic
    return configured, alone


def _small_inputs(seed: int):
    """``(x, kernel)``: a small float32 layer of 2 groups of 16 channels, 3x3 taps, stride 1, padding 1."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 32, 12, 12)).astype(np.float32),
            rng.standard_normal((2, 2, 3, 3, 12, 12)).astype(np.float32))


def _small_call(seed: int) -> float:
    """Largest error of the fast forward against the reference on ``_small_inputs(seed)`` (runs in children)."""
    from involution.fast import cpu
    from involution.reference import involution2d

    x, kernel = _small_inputs(seed)
    expected = involution2d(x.astype(np.float64), kernel.astype(np.float64), 1, 1, 1)
    return float(np.abs(cpu.involution2d(x, kernel, 1, 1, 1) - expected).max())


def fork_check(timeout: float = 60, log=print) -> dict:
    """Run the op in the parent, then in the children of a 'fork' Pool; ``ok`` if every child answered correctly
    within ``timeout`` seconds."""
    import numba

    parent_error = _small_call(0)
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        errors = pool.map_async(_small_call, range(1, 5)).get(timeout)
        status = "ok" if max(errors) < 1e-3 else f"wrong result (error {max(errors):.3g})"
    except multiprocessing.TimeoutError:
        status = f"no answer within {timeout:g} s (children terminated or hung)"
    except Exception as error:  # noqa: BLE001  (a child's exception, reported, not raised)
        status = f"failed: {error!r}"
    finally:
        pool.terminate()
        pool.join()
    log(f"fork: {status} (threading layer {numba.threading_layer()})")
    return {"status": status, "ok": status == "ok", "parent_error": parent_error,
            "threading_layer": numba.threading_layer()}


def threads_check(threads: int = 4, calls: int = 8, log=print) -> dict:
    """``threads`` Python threads make ``calls`` calls each at once; ``ok`` if every result is bitwise the result of
    a call made alone."""
    from involution.fast import cpu

    x, kernel = _small_inputs(0)
    expected = cpu.involution2d(x, kernel, 1, 1, 1)
    with ThreadPoolExecutor(threads) as executor:
        results = list(executor.map(lambda _: cpu.involution2d(x, kernel, 1, 1, 1), range(threads * calls)))
    ok = all(np.array_equal(result, expected) for result in results)
    log(f"threads: {'ok' if ok else 'results differ'} ({threads} Python threads, {threads * calls} calls)")
    return {"threads": threads, "calls": threads * calls, "ok": ok}
