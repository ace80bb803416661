"""The conformance worker process: what crosses the pipe back, and how a process that ends is reported.

The implementations below are loaded by the worker as ``test_conformance_worker:NAME`` (pytest puts this folder
on ``sys.path``, and the worker inherits it).
"""
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from involution.conformance.worker import ImplementationDied, Unsendable, Worker


class ShapeProblem(ValueError):
    """An implementation's own exception class, unknown to the parent process."""

    def __init__(self, axis, size):  # a signature pickle cannot rebuild
        super().__init__(f"axis {axis} has size {size}")


def _raises_own_error(x, kernel, stride=1, padding=0, dilation=1):
    raise ShapeProblem(2, x.shape[2])


def _returns_unpicklable(x, kernel, stride=1, padding=0, dilation=1):
    return lambda: x


def _exits(x, kernel, stride=1, padding=0, dilation=1):
    sys.exit(3)


def _echo(x, kernel, stride=1, padding=0, dilation=1):
    return x * 2


raises_own_error = SimpleNamespace(involution2d=_raises_own_error)
returns_unpicklable = SimpleNamespace(involution2d=_returns_unpicklable)
exits = SimpleNamespace(involution2d=_exits)
echo = SimpleNamespace(involution2d=_echo)
ARGS = (np.arange(6.0).reshape(1, 1, 2, 3), np.ones((1, 1, 1, 1, 2, 3)), 1, 0, 1)


@pytest.fixture
def worker(request):
    started = Worker(f"test_conformance_worker:{request.param}", "numpy", "cpu", timeout=30)
    description = started.start()
    assert description["available"], description
    yield started
    started.close()


@pytest.mark.parametrize("worker", ["echo"], indirect=True)
def test_answers_come_back_and_the_worker_is_reused(worker):
    first = worker.call("forward", ARGS)
    process = worker.process
    np.testing.assert_array_equal(worker.call("forward", ARGS), first)
    np.testing.assert_array_equal(first, ARGS[0] * 2)
    assert worker.process is process, "a second call started a second process"


@pytest.mark.parametrize("worker", ["raises_own_error"], indirect=True)
def test_own_exception_arrives_as_its_builtin_base_with_name_and_message(worker):
    with pytest.raises(ValueError, match=r"^axis 2 has size 2$") as info:
        worker.call("forward", ARGS)
    assert type(info.value).__name__ == "ShapeProblem", type(info.value)


@pytest.mark.parametrize("worker", ["returns_unpicklable"], indirect=True)
def test_a_function_as_result_comes_back_as_a_description_the_suite_can_judge(worker):
    result = worker.call("forward", ARGS)
    assert isinstance(result, Unsendable) and "function" in repr(result), repr(result)


@pytest.mark.parametrize("worker", ["exits"], indirect=True)
def test_sys_exit_is_reported_with_status_and_call_then_restarts(worker):
    with pytest.raises(ImplementationDied, match=r"exited with status 3 during forward\(x \(1, 1, 2, 3\) float64"):
        worker.call("forward", ARGS)
    assert worker.process is None
    with pytest.raises(ImplementationDied, match="status 3"):  # a fresh worker, the same fate
        worker.call("forward", ARGS)
