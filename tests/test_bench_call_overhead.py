"""The per-call overhead benchmark (``benchmarks/call_overhead.py``): results checked before timing, overheads as
differences of medians, the caller's thread counts kept."""
from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from involution.benchmarks import call_overhead

MEDIANS = {"front door": 5e-6, "kernel call": 3e-6, "validation": 1e-6, "torch op": 9e-6}  # seconds


def test_a_call_that_disagrees_stops_it_before_timing(monkeypatch):
    monkeypatch.setattr(call_overhead, "kernel_call", lambda *args: (lambda: np.zeros(1, np.float32)))
    monkeypatch.setattr(call_overhead, "interleaved_medians", lambda *args, **kwargs: pytest.fail("timed unchecked"))
    with pytest.raises(AssertionError, match="the kernel call and the front door disagree"):
        call_overhead.run(repeats=1, log=lambda line: None)


def test_overheads_are_differences_of_medians_and_thread_counts_come_back(monkeypatch):
    monkeypatch.setattr(call_overhead, "interleaved_medians", lambda calls, counts, settle: dict(MEDIANS))
    threads = numba.get_num_threads(), torch.get_num_threads()
    seen = []
    rows = call_overhead.run(threads=1, repeats=1, log=seen.append)
    assert [row["shape"] for row in rows] == list(call_overhead.shapes()), rows
    for row in rows:
        assert row["threads"] == 1, row
        assert (row["front_door_overhead_us"], row["torch_op_overhead_us"]) == pytest.approx((2.0, 4.0)), row
    assert (numba.get_num_threads(), torch.get_num_threads()) == threads, "the caller's thread counts changed"
    assert "front door - kernel call 2.0 us, torch op - front door 4.0 us" in seen[0], seen


def test_the_command_says_what_each_column_is(monkeypatch, capsys):
    monkeypatch.setattr(call_overhead, "run", lambda threads, repeats: None)
    call_overhead.main(["--repeats", "3"])
    legend = capsys.readouterr().out
    for term in ("front door = involution.fast.cpu.involution2d", "kernel call =", "validation =", "torch op ="):
        assert term in legend, legend
