"""``involution.fast.openmp``: a kernel's loop on the threads of a GNU OpenMP runtime (torch's).

Why: the fused span pass hands its work to torch's OpenMP threads through a cfunc, an argument block of raw
addresses and an atomic counter. A counter that loses or repeats an increment skips or doubles units of work; a
wrong pointer cast reads the wrong memory; a runtime used in a forked child waits for threads the child does not
have. Each is checked here on its own, with values that differ when it goes wrong.
"""
import ctypes
import ctypes.util

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from involution.fast import openmp  # noqa: E402


@numba.njit(parallel=True)
def _take_all(counter, taken, rounds):
    for _ in numba.prange(rounds):
        index = openmp.fetch_add(counter, 1)
        taken[index] += 1


def test_fetch_add_gives_every_value_once_across_threads():
    counter = np.zeros(1, np.int64)
    taken = np.zeros(20_000, np.int64)
    _take_all(counter, taken, taken.size)
    assert counter[0] == taken.size, f"counter ended at {counter[0]}, expected {taken.size}"
    wrong = np.flatnonzero(taken != 1)
    assert wrong.size == 0, f"{wrong.size} values not taken exactly once, first {wrong[0]}: {taken[wrong[0]]} times"


@numba.njit
def _read_through(address, count):
    return numba.carray(openmp.pointer(address, numba.float64), (count,)).sum()


def test_pointer_reads_the_array_at_an_address():
    values = np.arange(1.0, 8.0)
    assert _read_through(values.ctypes.data, values.size) == values.sum()
    assert _read_through(values[3:].ctypes.data, 4) == values[3:].sum()


def torch_runtime():
    torch = pytest.importorskip("torch")
    from involution.torch.span import torch_openmp

    found = torch_openmp()
    if found is None:
        pytest.skip(f"torch has no GNU OpenMP runtime here ({torch.__config__.parallel_info().splitlines()[0]})")
    return found


@numba.cfunc(numba.types.void(numba.types.voidptr))
def _mark_units(data):
    """Argument block: [counter, units, address of an int64 array of ``units`` marks]."""
    block = numba.carray(openmp.pointer(data, numba.int64), (3,))
    marks = numba.carray(openmp.pointer(block[2], numba.int64), (block[1],))
    unit = openmp.fetch_add(block[:1], 1)
    while unit < block[1]:
        marks[unit] += 1
        unit = openmp.fetch_add(block[:1], 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_runtime_runs_a_cfunc_on_its_threads_once_per_unit(threads):
    openmp_runtime = torch_runtime()
    marks = np.zeros(5_000, np.int64)
    block = np.array([0, marks.size, marks.ctypes.data], np.int64)
    openmp_runtime.run(_mark_units.address, block, threads)
    wrong = np.flatnonzero(marks != 1)
    assert wrong.size == 0, f"{threads} threads: {wrong.size} units not run exactly once, first {wrong[0]}"
    assert block[0] >= marks.size + 1, f"the counter ended at {block[0]}: some thread did not look for more work"


def test_runtime_at_refuses_what_is_not_a_gnu_openmp_runtime(tmp_path):
    assert openmp.runtime_at(str(tmp_path / "missing.so")) is None
    not_a_library = tmp_path / "text.so"
    not_a_library.write_text("not a shared library")
    assert openmp.runtime_at(str(not_a_library)) is None
    libc = ctypes.util.find_library("c")
    if libc:  # loads, but has no GOMP_parallel
        import os

        for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib"):
            path = os.path.join(folder, libc)
            if os.path.isfile(path):
                assert openmp.runtime_at(path) is None, f"{path} taken for a GNU OpenMP runtime"
                break


def test_runtime_is_not_usable_in_another_process(monkeypatch):
    openmp_runtime = torch_runtime()
    assert openmp_runtime.usable
    monkeypatch.setattr(openmp_runtime, "pid", openmp_runtime.pid + 1)  # as after a fork
    assert not openmp_runtime.usable
