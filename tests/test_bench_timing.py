"""The benchmark's timing protocol (``benchmarks/op_cpu.py``): round-robin rounds, each timed call after untimed calls
of the same implementation for at least ``settle`` seconds, and calls timed right after another runtime's call."""
from __future__ import annotations

import time

import pytest

from involution.benchmarks.timing import after_medians, interleaved_medians


def recorder(events: list, name: str, seconds: float = 0.0):
    def call():
        events.append(("call", name, time.perf_counter()))
        if seconds:
            time.sleep(seconds)
    return call


def test_each_timed_call_follows_settling_calls_of_its_own():
    events, settle = [], 0.01

    def clock():
        events.append(("clock", None, time.perf_counter()))
        return time.perf_counter()

    calls = {"a": recorder(events, "a", 0.002), "b": recorder(events, "b", 0.001)}
    medians = interleaved_medians(calls, {"a": 3, "b": 2}, clock=clock, settle=settle)
    clocks = [index for index, event in enumerate(events) if event[0] == "clock"]
    assert len(clocks) == 2 * (3 + 2), f"{len(clocks)} clock readings for 5 timed calls"
    timed = []
    for start, stop in zip(clocks[::2], clocks[1::2]):
        between = events[start + 1:stop]
        assert len(between) == 1, f"one call per timed interval, got {between}"
        name = between[0][1]
        timed.append(name)
        settling = []
        for event in reversed(events[:start]):  # the untimed calls just before, back to the previous timed one
            if event[0] == "clock" or event[1] != name:
                break
            settling.append(event)
        assert settling, f"timed call of {name} without an untimed call of {name} right before it"
        # settle runs from just before the first untimed call, whose own clock reading comes microseconds later
        assert events[start][2] - settling[-1][2] >= settle - 1e-4, (
            f"{name} settled for {events[start][2] - settling[-1][2]:.4f} s < {settle} s")
    assert timed == ["a", "b", "a", "b", "a"], f"rounds out of order: {timed}"
    assert set(medians) == {"a", "b"} and medians["a"] >= 0.002, medians


def test_no_settle_is_one_warm_up_round():
    events = []
    calls = {"a": recorder(events, "a"), "b": recorder(events, "b")}
    interleaved_medians(calls, {"a": 2, "b": 2}, settle=0)
    assert [event[1] for event in events] == ["a", "b", "a", "b", "a", "b"]


@pytest.mark.parametrize("repeats", [1, 3])
def test_after_medians_times_the_second_call_right_after_the_first(repeats):
    events = []
    pairs = {"x after y": (recorder(events, "y"), recorder(events, "x", 0.003))}
    medians = after_medians(pairs, repeats)
    assert [event[1] for event in events] == ["y", "x"] * (repeats + 1)
    assert 0.003 <= medians["x after y"] < 0.1, medians


def test_rows_are_timed_without_dynamic_threads_and_record_other_processes(monkeypatch):
    """The fast op runs on torch's fixed thread count while the rows are timed; the setting comes back after, and
    each row says how many cores other processes kept busy (the report flags a busy run)."""
    from involution.benchmarks import op_cpu, report
    from involution.fast import runtime

    seen = []
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", True)
    monkeypatch.setattr(op_cpu, "sgemm_gflops", lambda: 1.0)
    monkeypatch.setattr(op_cpu, "bench_layer", lambda *args: seen.append(runtime.DYNAMIC_THREADS) or {})
    monkeypatch.setattr(op_cpu, "format_rows", lambda rows, versions: "")
    monkeypatch.setattr(op_cpu, "summarize", lambda rows, sgemm: {})
    monkeypatch.setattr(op_cpu, "machine", lambda: {})
    samples = iter([(0.0, 0.0, 0.0), (1.0, 1.5, 0.5), (1.0, 1.5, 0.5), (2.0, 1.6, 0.6)])
    monkeypatch.setattr(runtime.FREE_CORES, "read", lambda: next(samples))
    result = op_cpu.run(batches=(1,), layers=("a", "b"), robustness_checks=False, log=lambda text: None)
    assert seen == [False, False], f"dynamic threads during the timed rows: {seen}"
    assert runtime.DYNAMIC_THREADS is True, "the setting was not restored"
    busy = [row["others_busy_cores"] for row in result["rows"]]
    assert busy == [pytest.approx(1.0), pytest.approx(0.0)], busy
    assert "Not a quiet machine" in report.busy_warning(result["rows"])
    assert report.busy_warning(result["rows"][1:]) == "", "a quiet row was flagged"
