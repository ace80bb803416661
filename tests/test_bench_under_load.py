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
            with runtime.call_threads():  # as the op: the dynamic threads choose (and count) a thread count
                pass

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
    for state in ("quiet", "loaded"):  # every timed call of the configured arm counted once, on 1 or 2 threads
        assert set(threads[state]) <= {"1", "2"} and sum(threads[state].values()) == 2 * calls * rounds, threads


THREADS = {"quiet": {"2": 10}, "loaded": {"1": 9, "2": 1}}  # timed calls per thread count, as alternate returns


def test_verdict_from_samples():
    ten = lambda value: [value] * 10  # noqa: E731
    samples = {"quiet": {"configured": {"x": ten(1.0)}, "one thread": {"x": ten(2.0)}},
               "loaded": {"configured": {"x": ten(2.0)}, "static": {"x": ten(3.0)}, "one thread": {"x": ten(3.0)}}}
    result = robustness.summarize_load(samples, THREADS, batch=1, rounds=2, core=1, still_spinning=True,
                                       log=lambda line: None)
    row = result["rows"][0]
    assert (row["p90_over_quiet_median"], row["static_p90_over_quiet_median"], row["one_thread_slowdown"],
            row["p90_over_one_thread_quiet_median"]) == pytest.approx((2.0, 3.0, 1.5, 1.0)), row
    assert result["within_2x"] and result["worst_static_p90_over_quiet_median"] == pytest.approx(3.0), result
    samples["loaded"]["configured"]["x"] = ten(2.5)
    result = robustness.summarize_load(samples, THREADS, batch=1, rounds=2, core=1, still_spinning=True,
                                       log=lambda line: None)
    assert not result["within_2x"] and result["worst_p90_over_quiet_median"] == pytest.approx(2.5), result
    table = report.checks_table({"under_load": result})
    assert "| x | 1 | 1000.00 | 2500.00 | 2500.00 | 2.50 | 3.00 | 2000.00 | 3000.00 | 1.50 | 1.25 |" in table, table
    assert "2.50 (**not** within the 2x target); with static threads 3.00" in table, table
    assert "on how many threads: 10 on 2 quiet, 9 on 1, 1 on 2 loaded" in table, table


def test_with_one_core_to_run_on_the_check_is_skipped_not_run(monkeypatch):
    monkeypatch.setattr(robustness.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(robustness, "spinning", lambda core: pytest.fail(f"a spinner started on core {core}"))
    logged = []
    result = robustness.under_load(["unused"], log=logged.append)
    assert result == {"skipped": "needs two cores to run on, this process has 1"}, result
    assert logged == ["under load: skipped (needs two cores to run on, this process has 1)"], logged
    assert report.checks_table({"under_load": result}) == "Under load: skipped (needs two cores to run on, this " \
                                                          "process has 1).", report.checks_table({"under_load": result})


def test_the_spinner_takes_the_highest_core_this_process_may_use(monkeypatch):
    monkeypatch.setattr(robustness.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    monkeypatch.setattr(robustness.os, "cpu_count", lambda: 64)
    assert robustness.spinner_core() == 5


@pytest.mark.parametrize("calls, rounds", [(1, 1), (2, 3), (30, 0)])
def test_too_few_calls_for_a_percentile_is_a_named_error(calls, rounds, monkeypatch):
    monkeypatch.setattr(robustness, "spinning", lambda core: pytest.fail("a spinner started"))
    with pytest.raises(ValueError, match=f"calls >= max\\(2, rounds\\), got calls={calls}, rounds={rounds}"):
        robustness.under_load(["unused"], calls=calls, rounds=rounds, log=lambda line: None)


def test_an_older_runs_check_renders_with_the_columns_it_has():
    """Runs made before the alternating protocol (their JSON files back docs/performance.md's older tables)."""
    older = {"calls": 30, "spinning_core": 1, "spinner_ran_throughout": False, "worst_p90_over_quiet_median": 4.77,
             "within_2x": False, "rows": [{"layer": "x", "batch": 1, "quiet_median_ms": 1.03, "loaded_median_ms": 1.08,
                                           "loaded_p90_ms": 4.92, "p90_over_quiet_median": 4.77}]}
    table = report.checks_table({"under_load": older})
    assert "| layer | B | quiet median ms | loaded median ms | loaded p90 ms | p90 / quiet median |\n" in table, table
    assert "| x | 1 | 1.03 | 1.08 | 4.92 | 4.77 |" in table, table
    assert ("Under load (one process spinning on core 1, 30 calls per layer; **the spinner stopped before the end: "
            "the later loaded calls ran without it**): worst p90 / quiet median 4.77 (**not** within") in table, table


def test_a_paused_spinner_dies_with_the_block_on_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt), robustness.spinning(robustness.spinner_core()) as spinner:
        os.kill(spinner.pid, robustness.signal.SIGSTOP)
        raise KeyboardInterrupt
    assert spinner.returncode is not None, "a paused spinner outlived the block"
