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
    """Argument block: [counter, units, address of an int64 array of ``units`` marks, calls]."""
    block = numba.carray(openmp.pointer(data, numba.int64), (4,))
    openmp.fetch_add(block[3:], 1)  # one call per thread of the region
    marks = numba.carray(openmp.pointer(block[2], numba.int64), (block[1],))
    unit = openmp.fetch_add(block[:1], 1)
    while unit < block[1]:
        marks[unit] += 1
        unit = openmp.fetch_add(block[:1], 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_runtime_runs_a_cfunc_on_its_threads_once_per_unit(threads):
    openmp_runtime = torch_runtime()
    marks = np.zeros(5_000, np.int64)
    block = np.array([0, marks.size, marks.ctypes.data, 0], np.int64)
    openmp_runtime.run(_mark_units.address, block, threads)
    assert block[3] == threads, f"asked for {threads} threads, the function ran {block[3]} times"
    wrong = np.flatnonzero(marks != 1)
    assert wrong.size == 0, f"{threads} threads: {wrong.size} units not run exactly once, first {wrong[0]}"
    with pytest.raises(ValueError, match="block must be a C-contiguous int64"):
        openmp_runtime.run(_mark_units.address, block.astype(np.int32), threads)


def test_runtime_at_refuses_what_is_not_a_gnu_openmp_runtime(tmp_path):
    assert openmp.runtime_at(str(tmp_path / "missing.so")) is None
    not_a_library = tmp_path / "text.so"
    not_a_library.write_text("not a shared library")
    assert openmp.runtime_at(str(not_a_library)) is None
    assert openmp.runtime_at("libinvolution-never-loaded.so.1", loaded_only=True) is None
    libc = ctypes.util.find_library("c")
    if libc:  # loads, but has no GOMP_parallel
        assert openmp.runtime_at(libc) is None, f"{libc} taken for a GNU OpenMP runtime"


def _in_child(queue):
    try:
        child_runtime = openmp.Runtime("libgomp.so.1", loaded_only=True)
        try:
            child_runtime.run(_mark_units.address, np.zeros(4, np.int64), 2)
            refused = False
        except RuntimeError:
            refused = True
        queue.put((child_runtime.usable, refused))
    except BaseException as error:
        queue.put((None, repr(error)))


def in_forked_child(target, timeout: float):
    """What ``target(queue)``, run in a forked child, put on ``queue``; fails the test when the child takes longer
    than ``timeout`` seconds (a region waiting for the parent's threads)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=target, args=(queue,))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        pytest.fail(f"the forked child ({target.__name__}) did not finish within {timeout} s")
    return queue.get(timeout=10)


def test_runtime_is_not_usable_in_a_forked_child():
    """Loaded in the parent or in the child, the runtime says it is not usable in a fork, and refuses to run
    there (a region on two threads would wait forever for the parent's threads)."""
    parent_runtime = torch_runtime()
    assert parent_runtime.usable
    usable, refused = in_forked_child(_in_child, 60)
    assert usable is False and refused is True, f"in the forked child: usable {usable}, refused {refused}"
