"""The under-load check of the fast CPU forward, run by ``python -m involution bench``: latency while another process
spins on one core. (That the op is bitwise reproducible from several Python threads at once and runs in the children
of a ``fork``-started Pool is tested, tests/test_fast_cpu.py, not benchmarked.)

* Under load: per layer at batch 1, timed calls with a child process spinning on the last core this process may
  use (pinned with ``os.sched_setaffinity``, bounded in time, killed after) alternately paused and running, three
  rounds of each (skipped, with the reason, off Linux or with fewer than two cores);
  the check is the loaded 90th percentile (``statistics.quantiles``) against the quiet median, target at most 2x,
  for the op as configured and with its dynamic threads off, and against a lone thread's quiet median (the best the
  one free core can do: a machine that loses one of two cores loses the op's two-thread speedup, which this
  separates from the stalls).
"""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

from involution.benchmarks.layers import layer_geometry, layer_name, random_inputs
from involution.benchmarks.timing import call_seconds, settle_calls

SPIN = ("import os, time\nos.sched_setaffinity(0, {{{core}}})\nend = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n    pass\n")


ROUNDS = 3  # quiet and loaded alternate this many times per layer, so that a drift of the host hits both alike
SWITCH_SECONDS = 0.3  # after pausing or resuming the spinner: the dynamic threads' 0.1 s windows see the change
ARMS = {"configured": (None, None),  # (dynamic threads, numba threads); None: as configured
        "static": (False, None),  # loaded only: the configured thread count, dynamic threads off
        "one thread": (False, 1)}  # a lone thread: how fast the host runs one core in each state
STATE_ARMS = {"quiet": ("configured", "one thread"), "loaded": ("configured", "static", "one thread")}


def under_load(layers, batch: int = 1, calls: int = 30, rounds: int = ROUNDS, log=print) -> dict:
    """Quiet median and loaded 90th percentile of the fast forward on every layer at ``batch``; one JSON-ready dict.

    Per layer, ``rounds`` times: the spinner paused (quiet), then running (loaded), ``calls // rounds`` timed calls
    per arm of :data:`STATE_ARMS` in each. The loaded 90th percentile (``statistics.quantiles``) of the op as
    configured, and of the same thread count with the dynamic threads off ("static"), is compared with the quiet
    median (target: at most 2x); a lone thread's loaded / quiet median says how much the host itself slows a core
    when the other one is busy (about 1 where the cores do not contend).

    Where the check cannot run (:func:`spinner_core`), the dict is ``{"skipped": reason}``, logged. Raises
    ``ValueError`` unless ``rounds >= 1`` and ``calls >= max(2, rounds)`` (a percentile needs two calls per arm,
    every round one)."""
    from involution.fast import cpu

    if rounds < 1 or calls < max(2, rounds):
        raise ValueError(f"under_load needs rounds >= 1 and calls >= max(2, rounds), got calls={calls}, "
                         f"rounds={rounds}")
    core = spinner_core()
    if isinstance(core, str):
        log(f"under load: skipped ({core})")
        return {"skipped": core}
    timed = []
    for layer in layers:
        geometry = layer_geometry(layer, batch)
        x, kernel, _ = random_inputs(geometry, np.float32, seed=batch)
        params = (geometry.stride, geometry.padding, geometry.dilation)
        timed.append((layer_name(layer),
                      lambda x=x, kernel=kernel, params=params: cpu.involution2d(x, kernel, *params)))
    with spinning(core) as spinner:
        samples, threads = alternate(timed, spinner, calls // rounds, rounds)
        still_spinning = spinner.poll() is None
    return summarize_load(samples, threads, batch, rounds, core, still_spinning, log)


def spinner_core() -> int | str:
    """The core the spinner takes: the highest of those this process may run on (``os.sched_getaffinity``); or,
    as a string, why the check cannot run here: no ``os.sched_setaffinity`` or no ``SIGSTOP`` (not Linux), or fewer
    than two cores to run on (the spinner would share the op's only core: time slicing, not a busy neighbour)."""
    if not hasattr(os, "sched_setaffinity") or not hasattr(signal, "SIGSTOP"):
        return f"needs os.sched_setaffinity and SIGSTOP, which {sys.platform} lacks"
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        return f"needs two cores to run on, this process has {len(cores)}"
    return max(cores)


@contextlib.contextmanager
def spinning(core: int, seconds: float = 600):
    """A child process spinning on ``core`` (pinned, bounded to ``seconds``), killed when the block ends."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(core=core, seconds=seconds)])
    try:
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


@contextlib.contextmanager
def arm_settings(arm: str):
    """numba's thread count and the dynamic threads as :data:`ARMS` says for ``arm``; both restored after."""
    import numba

    from involution.fast import runtime

    dynamic, threads = ARMS[arm]
    configured = numba.get_num_threads()
    with runtime.dynamic_threads(runtime.DYNAMIC_THREADS if dynamic is None else dynamic):
        numba.set_num_threads(threads or configured)
        try:
            yield
        finally:
            numba.set_num_threads(configured)


def alternate(timed, spinner, calls: int, rounds: int, switch_seconds: float = SWITCH_SECONDS):
    """Per ``(name, call)`` of ``timed``, ``rounds`` times: pause ``spinner`` (SIGSTOP), time ``calls`` calls per
    quiet arm, resume it (SIGCONT), time ``calls`` calls per loaded arm; each arm's calls follow settling calls, and
    the arms take turns at going first after the switch (:func:`rotated`).
    Returns ``samples[state][arm][name]`` (seconds, pooled over the rounds) and ``threads[state]``, how many timed
    calls of the op as configured ran on how many threads (``{"2": 240}``: the dynamic threads' choices, counted by
    ``runtime.FREE_CORES.choices``; with the dynamic threads off, numba's thread count)."""
    import numba

    from involution.fast import runtime

    samples = {state: {arm: {} for arm in arms} for state, arms in STATE_ARMS.items()}
    threads = {state: collections.Counter() for state in STATE_ARMS}
    for name, call in timed:
        for round_ in range(rounds):
            for state, arms in STATE_ARMS.items():
                os.kill(spinner.pid, signal.SIGCONT if state == "loaded" else signal.SIGSTOP)
                time.sleep(switch_seconds)
                for arm in rotated(arms, round_):
                    with arm_settings(arm):
                        settle_calls(call)
                        runtime.FREE_CORES.choices.clear()
                        samples[state][arm].setdefault(name, []).extend(call_seconds(call, calls, warmup=0))
                        if arm == "configured":
                            threads[state].update(runtime.FREE_CORES.choices if runtime.DYNAMIC_THREADS
                                                  else {numba.get_num_threads(): calls})
    return samples, {state: {str(count): threads[state][count] for count in sorted(threads[state])}
                     for state in STATE_ARMS}


def rotated(items, shift: int) -> tuple:
    """``items`` rotated left by ``shift``: round ``r`` of :func:`alternate` starts with arm ``r``."""
    shift %= len(items)
    return tuple(items[shift:]) + tuple(items[:shift])


def calls_by_threads(counts: dict) -> str:
    """``{"1": 9, "2": 1}`` (timed calls per thread count, :func:`alternate`) as ``"9 on 1, 1 on 2"``."""
    return ", ".join(f"{calls} on {threads}" for threads, calls in counts.items())


def summarize_load(samples, threads, batch: int, rounds: int, core: int, still_spinning: bool, log=print) -> dict:
    """Rows and verdict of the under-load check from :func:`alternate`'s samples; logs one line per layer."""
    from involution.fast import runtime

    quiet, loaded = samples["quiet"], samples["loaded"]
    rows = []
    for name, times in quiet["configured"].items():
        quiet_median = statistics.median(times)
        p90 = {arm: statistics.quantiles(loaded[arm][name], n=10)[-1] for arm in ("configured", "static")}
        alone = statistics.median(quiet["one thread"][name]), statistics.median(loaded["one thread"][name])
        rows.append({"layer": name, "batch": batch, "quiet_median_ms": 1e3 * quiet_median,
                     "loaded_median_ms": 1e3 * statistics.median(loaded["configured"][name]),
                     "loaded_p90_ms": 1e3 * p90["configured"],
                     "p90_over_quiet_median": p90["configured"] / quiet_median,
                     "static_loaded_p90_ms": 1e3 * p90["static"],
                     "static_p90_over_quiet_median": p90["static"] / quiet_median,
                     "one_thread_quiet_median_ms": 1e3 * alone[0], "one_thread_loaded_median_ms": 1e3 * alone[1],
                     "one_thread_slowdown": alone[1] / alone[0],
                     "p90_over_one_thread_quiet_median": p90["configured"] / alone[0]})
        log(f"under load {name:>14s} B{batch}: quiet median {rows[-1]['quiet_median_ms']:6.2f} ms, loaded p90 "
            f"{rows[-1]['loaded_p90_ms']:6.2f} ms ({rows[-1]['p90_over_quiet_median']:.2f}x; static threads "
            f"{rows[-1]['static_p90_over_quiet_median']:.2f}x); a lone thread's loaded / quiet median "
            f"{rows[-1]['one_thread_slowdown']:.2f}")
    worst = {key: max(row[key] for row in rows)
             for key in ("p90_over_quiet_median", "static_p90_over_quiet_median", "p90_over_one_thread_quiet_median")}
    one_thread_slowdown = statistics.geometric_mean(row["one_thread_slowdown"] for row in rows)
    count = len(quiet["configured"][rows[0]["layer"]])
    log(f"under load: worst p90 / quiet median {worst['p90_over_quiet_median']:.2f} (target <= 2; static threads "
        f"{worst['static_p90_over_quiet_median']:.2f}; over a lone thread's quiet median "
        f"{worst['p90_over_one_thread_quiet_median']:.2f}); a lone thread's loaded / quiet median "
        f"{one_thread_slowdown:.2f} (geometric mean: about 1 where the cores do not contend)")
    log(f"under load: calls of the op as configured on how many threads: {calls_by_threads(threads['quiet'])} quiet, "
        f"{calls_by_threads(threads['loaded'])} loaded (dynamic threads {'on' if runtime.DYNAMIC_THREADS else 'off'})")
    return {"calls": count, "rounds": rounds, "spinning_core": core, "spinner_ran_throughout": still_spinning,
            "rows": rows, "threads_quiet": threads["quiet"], "threads_under_load": threads["loaded"],
            "dynamic_threads": runtime.DYNAMIC_THREADS, "one_thread_slowdown": one_thread_slowdown,
            "worst_p90_over_quiet_median": worst["p90_over_quiet_median"],
            "worst_static_p90_over_quiet_median": worst["static_p90_over_quiet_median"],
            "worst_p90_over_one_thread_quiet_median": worst["p90_over_one_thread_quiet_median"],
            "within_2x": worst["p90_over_quiet_median"] <= 2}
