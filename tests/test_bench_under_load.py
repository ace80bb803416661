"""The under-load check's protocol (``benchmarks/robustness.py``): quiet and loaded phases alternate per layer with
the spinner paused and resumed, each arm on its own thread settings, and the verdict computed from the samples."""
from __future__ import annotations

import itertools
import os
import sys

import numba
import pytest

from involution.benchmarks import report, robustness
from involution.fast import runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/stat")


def process_state(pid: int) -> str:
    """``"stopped"`` if process ``pid`` is stopped by a signal, else ``"running"`` (from ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as file:
        state = file.read().rsplit(")", 1)[1].split()[0]
    return "stopped" if state == "T" else "running"


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs numba threads to choose from")
def test_quiet_and_loaded_alternate_with_each_arms_settings():
    observed, calls, rounds = [], 3, 2
    numba.set_num_threads(2)
    with robustness.spinning(os.cpu_count() - 1) as spinner, runtime.dynamic_threads(True):
        def call():
            observed.append((process_state(spinner.pid), numba.get_num_threads(), runtime.DYNAMIC_THREADS))

        samples, threads = robustness.alternate([("a", call), ("b", call)], spinner, calls, rounds,
                                                switch_seconds=0.05)
        assert runtime.DYNAMIC_THREADS is True and numba.get_num_threads() == 2, "arm settings not restored"
    assert spinner.poll() is not None, "the spinner outlived the block"
    phases = [key for key, _ in itertools.groupby(observed)]  # settling and timed calls of one arm: one phase
    quiet = [("stopped", 2, True), ("stopped", 1, False)]  # as configured, one thread
    loaded = [("running", 2, True), ("running", 2, False), ("running", 1, False)]  # the same and static threads
    one_layer = [phase for round_ in range(rounds)  # each round starts with the next arm
                 for phase in quiet[round_:] + quiet[:round_] + loaded[round_:] + loaded[:round_]]
    assert phases == one_layer * 2, f"phases seen: {phases}"
    for state, arms in robustness.STATE_ARMS.items():
        for arm in arms:
            counts = {name: len(times) for name, times in samples[state][arm].items()}
            assert counts == {"a": calls * rounds, "b": calls * rounds}, f"{state} {arm}: {counts} timed calls"
    assert set(threads) == {"quiet", "loaded"} and all(count in (1, 2) for count in threads["loaded"]), threads


def test_verdict_from_samples():
    ten = lambda value: [value] * 10  # noqa: E731
    samples = {"quiet": {"configured": {"x": ten(1.0)}, "one thread": {"x": ten(2.0)}},
               "loaded": {"configured": {"x": ten(2.0)}, "static": {"x": ten(3.0)}, "one thread": {"x": ten(3.0)}}}
    result = robustness.summarize_load(samples, {"quiet": [2], "loaded": [1]}, batch=1, rounds=2, core=1,
                                       still_spinning=True, log=lambda line: None)
    row = result["rows"][0]
    assert (row["p90_over_quiet_median"], row["static_p90_over_quiet_median"], row["one_thread_slowdown"],
            row["p90_over_one_thread_quiet_median"]) == pytest.approx((2.0, 3.0, 1.5, 1.0)), row
    assert result["within_2x"] and result["worst_static_p90_over_quiet_median"] == pytest.approx(3.0), result
    samples["loaded"]["configured"]["x"] = ten(2.5)
    result = robustness.summarize_load(samples, {"quiet": [2], "loaded": [1]}, batch=1, rounds=2, core=1,
                                       still_spinning=True, log=lambda line: None)
    assert not result["within_2x"] and result["worst_p90_over_quiet_median"] == pytest.approx(2.5), result
    table = report.checks_table({"under_load": result})
    assert "| x | 1 | 1000.00 | 2500.00 | 2500.00 | 2.50 | 3.00 | 2000.00 | 3000.00 | 1.50 | 1.25 |" in table, table
    assert "2.50 (**not** within the 2x target); with static threads 3.00" in table, table
