"""Dynamic threads of the fast CPU backend (``involution.fast.runtime.FreeCores``, ``call_threads``): a kernel call
runs on fewer threads while other processes keep cores busy, never changes numba's thread count for the caller, and
gives bitwise the same result either way."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

numba = pytest.importorskip("numba")
runtime = pytest.importorskip("involution.fast.runtime")
from involution.fast import cpu  # noqa: E402


class Samples:
    """A fake ``/proc/stat`` reader: ``(seconds, busy seconds of all CPUs, this process's CPU seconds)``."""

    def __init__(self):
        self.now, self.busy, self.own = 100.0, 0.0, 0.0

    def advance(self, seconds: float, others: float, own: float = 0.0):
        """``seconds`` pass while other processes keep ``others`` cores busy and this one ``own`` cores."""
        self.now += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def __call__(self):
        return self.now, self.busy, self.own


@pytest.fixture
def fake_clock(monkeypatch):
    samples = Samples()
    monkeypatch.setattr(runtime.time, "monotonic", lambda: samples.now)
    return samples


@pytest.mark.parametrize("others, own, requested, expected", [
    (0.0, 2.0, 2, 2),    # only this process busy (its own threads, torch's included): every thread
    (1.0, 1.0, 2, 1),    # another process spins on one core of two: one thread
    (0.3, 1.0, 2, 2),    # a light neighbour (rounds to 0 cores)
    (0.7, 0.0, 2, 1),    # rounds to 1 core
    (2.0, 0.0, 2, 1),    # every core busy: still one thread (the caller's)
    (1.0, 0.0, 4, 3),    # 4 cores, one busy: three threads
    (0.0, 0.0, 8, 8),    # more threads than cores on an idle machine: the user's choice is kept
])
def test_threads_follow_the_cores_others_leave_free(fake_clock, others, own, requested, expected):
    cores = max(2, min(requested, 4))
    free = runtime.FreeCores(interval=0.1, read=fake_clock, cpus=cores)
    assert free.threads(requested) == requested, "no window has passed yet: nothing is known"
    fake_clock.advance(0.2, others, own)
    got = free.threads(requested)
    assert got == expected, (f"{others} cores busy with others, {own} with this process, {cores} cores, "
                             f"{requested} requested: {got} threads, expected {expected}")


def test_the_sample_is_refreshed_only_after_the_interval(fake_clock):
    free = runtime.FreeCores(interval=0.1, read=fake_clock, cpus=2)
    fake_clock.advance(0.05, others=1.0)
    assert free.threads(2) == 2, "a window shorter than the interval must not be used"
    fake_clock.advance(0.1, others=1.0)
    assert free.threads(2) == 1
    fake_clock.advance(0.2, others=0.0)
    assert free.threads(2) == 2, "the neighbour left: every thread again"


def test_unreadable_statistics_leave_every_thread(fake_clock):
    free = runtime.FreeCores(interval=0.1, read=lambda: None, cpus=2)
    fake_clock.advance(1.0, others=2.0)
    assert free.threads(2) == 2


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat only")
def test_proc_stat_is_parsed_and_sees_a_spinning_process():
    """The real reader: busy time grows at least by what a spinning child burns on our CPUs (the child is ours
    to start, but not this process's CPU time)."""
    free = runtime.FreeCores()
    before = free.read_proc_stat()
    assert before is not None and before[1] > 0 and before[2] >= 0, f"implausible sample {before}"
    spinner = subprocess.Popen([sys.executable, "-c",
                                "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass"])
    spinner.wait(timeout=30)
    after = free.read_proc_stat()
    others = (after[1] - before[1]) - (after[2] - before[2])
    assert others >= 0.3, f"a child spinning 0.6 s showed as {others:.2f} busy seconds of other processes"


def test_a_call_restores_numbas_thread_count_and_the_result(monkeypatch):
    """With every other core busy the call runs on one thread: same bits, and the caller's count is unchanged."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 12, 12)).astype(np.float32)
    kernel = rng.standard_normal((2, 2, 3, 3, 12, 12)).astype(np.float32)
    threads = numba.get_num_threads()
    if threads < 2:
        pytest.skip("numba runs one thread here: nothing to lower")
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)
    expected = cpu.involution2d(x, kernel, 1, 1, 1)
    busy = runtime.FreeCores(interval=0.0, read=lambda: None, cpus=threads)
    busy.busy = float(threads)  # as if other processes held every core
    monkeypatch.setattr(runtime, "FREE_CORES", busy)
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", True)
    with runtime.call_threads() as during:
        assert during == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == threads, "call_threads did not restore numba's thread count"
    out = cpu.involution2d(x, kernel, 1, 1, 1)
    assert numba.get_num_threads() == threads, "the call changed numba's thread count"
    assert np.array_equal(out, expected), "one thread (dynamic) and the requested threads differ"


def test_the_environment_variable_turns_it_off():
    script = "from involution.fast import runtime; print(runtime.DYNAMIC_THREADS)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "INVOLUTION_DYNAMIC_THREADS": value}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert result.stdout.strip() == expected, (f"INVOLUTION_DYNAMIC_THREADS={value}: {result.stdout!r} "
                                                   f"{result.stderr}")


def test_an_exception_in_the_call_restores_numbas_thread_count(monkeypatch):
    threads = numba.get_num_threads()
    if threads < 2:
        pytest.skip("numba runs one thread here: nothing to lower")
    busy = runtime.FreeCores(interval=0.0, read=lambda: None, cpus=threads)
    busy.busy = float(threads)
    monkeypatch.setattr(runtime, "FREE_CORES", busy)
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", True)
    with pytest.raises(ZeroDivisionError):
        with runtime.call_threads() as during:
            assert during == 1
            1 / 0
    assert numba.get_num_threads() == threads, "an exception inside the call left numba's thread count lowered"


def test_choices_count_the_answers_by_thread_count():
    free = runtime.FreeCores(interval=0.0, read=lambda: None, cpus=4)
    for busy, requested in ((0.0, 4), (0.0, 4), (2.6, 4), (3.9, 2)):
        free.busy = busy
        free.threads(requested)
    assert free.choices == {4: 2, 1: 2}, free.choices
    free.choices.clear()
    free.busy = 0.0
    free.threads(3)
    assert free.choices == {3: 1}, free.choices


def test_the_dynamic_threads_block_sets_and_restores_the_setting(monkeypatch):
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", True)
    with runtime.dynamic_threads(False):
        assert runtime.DYNAMIC_THREADS is False
        with pytest.raises(ZeroDivisionError), runtime.dynamic_threads(True):
            assert runtime.DYNAMIC_THREADS is True
            1 / 0
        assert runtime.DYNAMIC_THREADS is False, "an exception restored the wrong setting"
    assert runtime.DYNAMIC_THREADS is True, "the block did not restore the setting"


def test_others_busy_is_the_window_average_of_other_processes():
    previous, current = (10.0, 50.0, 3.0), (10.5, 51.5, 3.25)  # 1.5 busy seconds on the CPUs, 0.25 of them ours
    assert runtime.FreeCores.others_busy(previous, current) == pytest.approx(2.5)
    assert runtime.FreeCores.others_busy(previous, (10.5, 50.1, 3.5)) == 0.0, "our own time is never others'"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_starts_a_fresh_window(monkeypatch):
    """A child's ``process_time`` restarts from 0: with its parent's last sample, the parent's CPU time would count
    as other processes' and the child would run on one thread; and it must not inherit a busy verdict."""
    import multiprocessing

    monkeypatch.setattr(runtime.FREE_CORES, "busy", 5.0)
    monkeypatch.setattr(runtime.FREE_CORES, "sample", (time.monotonic(), 1e6, 1e6))  # the parent's, stale
    with multiprocessing.get_context("fork").Pool(1) as pool:
        busy, sample = pool.apply(_free_cores_state)
    assert busy == 0.0, f"the child inherited busy {busy}"
    assert sample is None or sample[2] < 1e6, f"the child kept its parent's sample {sample}"


def _free_cores_state():
    return runtime.FREE_CORES.busy, runtime.FREE_CORES.sample


def test_an_unknown_proc_stat_layout_counts_every_core_free(monkeypatch, tmp_path):
    """A ``/proc/stat`` this parser does not know (a container's, say) must not break a kernel call."""
    import builtins

    odd = tmp_path / "stat"
    odd.write_bytes(b"cpu  1 2 3 4 5 6 7 8 0 0\ncpuX 1 2 3\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open",
                        lambda path, *args, **kwargs: real_open(odd if path == "/proc/stat" else path, *args, **kwargs))
    free = runtime.FreeCores()
    assert free.read_proc_stat() is None
    assert free.threads(2) == 2
