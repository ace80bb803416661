"""The conformance worker process: what crosses the pipe back, and how a process that ends is reported.

The implementations below are loaded by the worker as ``test_conformance_worker:NAME`` (pytest puts this folder
on ``sys.path``, and the worker inherits it).
"""
import os
import signal
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


def _strides(x, kernel, stride=1, padding=0, dilation=1):
    return np.array(x.strides + kernel.strides)


def _scales_in_place(x, kernel, stride=1, padding=0, dilation=1):
    x *= 2
    return x.copy()


def _segfaults(x, kernel, stride=1, padding=0, dilation=1):
    print("\x1b[31mabout to crash\x1b[0m", flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)


def _raises_in_color(x, kernel, stride=1, padding=0, dilation=1):
    raise KeyError("\x1b[1;31mno such key\x1b[0m")


raises_own_error = SimpleNamespace(involution2d=_raises_own_error)
strides = SimpleNamespace(involution2d=_strides)
scales_in_place = SimpleNamespace(involution2d=_scales_in_place)
segfaults = SimpleNamespace(involution2d=_segfaults)
raises_in_color = SimpleNamespace(involution2d=_raises_in_color)
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


@pytest.mark.parametrize("worker", ["strides"], indirect=True)
def test_memory_layouts_arrive_as_sent(worker):
    from involution.conformance.layouts import LAYOUTS, as_layout

    x, kernel = np.arange(24.0).reshape(1, 2, 3, 4), np.ones((1, 1, 1, 1, 3, 4))
    for layout in LAYOUTS:
        sent = as_layout(x, layout), as_layout(kernel, layout)
        arrived = tuple(int(n) for n in worker.call("forward", (*sent, 1, 0, 1)))
        assert arrived == sent[0].strides + sent[1].strides, layout


@pytest.mark.parametrize("worker", ["scales_in_place"], indirect=True)
def test_inputs_changed_in_the_worker_are_reported_here(worker):
    """An implementation that scales x in place: the call fails here naming the input (the suite's one call path,
    ``backends.Unmodified``, checks it on every call), and the caller's x is left as it was."""
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    with pytest.raises(AssertionError, match=r"forward modified its inputs: x \(5 of 6 elements changed\)") as info:
        worker.call("forward", (x, ARGS[1], 1, 0, 1))
    assert type(info.value).__name__ == "InputModified", type(info.value)  # the worker's class, by name only
    np.testing.assert_array_equal(x, np.arange(6.0).reshape(1, 1, 2, 3))


@pytest.mark.parametrize("worker", ["segfaults"], indirect=True)
def test_a_signal_is_named_with_its_likely_cause_and_the_output_tail(worker):
    with pytest.raises(ImplementationDied) as info:
        worker.call("forward", ARGS)
    message = str(info.value)
    assert "exited with signal SIGSEGV (a segmentation fault" in message, message
    assert "about to crash" in message and "\x1b" not in message, message


@pytest.mark.parametrize("worker", ["raises_in_color"], indirect=True)
def test_exceptions_come_back_as_text_without_escape_codes(worker):
    with pytest.raises(KeyError) as info:
        worker.call("forward", ARGS)
    assert "no such key" in str(info.value) and "\x1b" not in str(info.value), repr(info.value)
    assert "_raises_in_color" in info.value.worker_traceback, info.value.worker_traceback


def test_the_parent_never_unpickles(monkeypatch):
    """The guarantee in docs/conformance.md: no pickle load in the parent, whatever comes back (a result, an
    implementation's own exception); multiprocessing's ``Connection.recv`` unpickles through ForkingPickler."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    def refuse(*args, **kwargs):
        raise AssertionError("the parent unpickled something")

    for owner, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (ForkingPickler, "loads")):
        monkeypatch.setattr(owner, name, refuse)
    for name, check in (("returns_unpicklable", lambda w: isinstance(w.call("forward", ARGS), Unsendable)),
                        ("echo", lambda w: np.array_equal(w.call("forward", ARGS), ARGS[0] * 2))):
        started = Worker(f"test_conformance_worker:{name}", "numpy", "cpu", timeout=30)
        try:
            assert started.start()["available"] and check(started), name
        finally:
            started.close()
    started = Worker("test_conformance_worker:raises_own_error", "numpy", "cpu", timeout=30)
    try:
        started.start()
        with pytest.raises(ValueError, match="axis 2"):
            started.call("forward", ARGS)
    finally:
        started.close()


@pytest.mark.parametrize("worker", ["exits"], indirect=True)
def test_after_three_ended_processes_calls_fail_without_restarting(worker):
    for _ in range(3):
        with pytest.raises(ImplementationDied, match="status 3"):
            worker.call("forward", ARGS)
    with pytest.raises(ImplementationDied, match=r"not called: the implementation's process ended 3 times "
                                                 r"\(last: status 3\)"):
        worker.call("forward", ARGS)
    assert worker.process is None  # no fourth import


@pytest.mark.parametrize("returncode, expected", [
    (3, "status 3"),
    (-signal.SIGFPE, "signal SIGFPE (an arithmetic fault in compiled code, e.g. an integer division by zero)"),
    (-signal.SIGKILL, "signal SIGKILL (killed from outside: most likely the system's out-of-memory killer, or the "
                      "memory limit of 2 GiB (--memory-limit))"),
])
def test_exit_statuses_are_named(returncode, expected):
    from involution.conformance.worker import describe_status

    assert describe_status(returncode, 2.0) == expected


def test_the_channel_checks_sizes_before_it_reads_a_frame():
    """A header over the cap, arrays over the message's bound, or a frame longer than its declared array: each is
    refused from its length prefix, without the bytes being read (tests/test_conformance_hostile.py measures it)."""
    import json
    import threading
    from multiprocessing import Pipe

    from involution.conformance.channel import MAX_HEADER_BYTES, ProtocolError, receive

    small = {"t": "array", "dtype": "<f8", "shape": [2], "layout": "contiguous"}
    huge = {"t": "array", "dtype": "<f8", "shape": [1 << 30], "layout": "contiguous"}
    cases = [
        ([b"[" + b" " * MAX_HEADER_BYTES + b"]"], "header over"),
        ([json.dumps({"kind": "ok", "value": huge, "buffers": 1}).encode()], "over the"),
        ([json.dumps({"kind": "ok", "value": small, "buffers": 1}).encode(), b"\0" * 17], "longer than its array"),
        ([json.dumps({"kind": "ok", "value": small, "buffers": 2}).encode()], "declares 1 arrays"),
    ]
    for frames, expected in cases:
        here, there = Pipe()

        def write(frames=frames, there=there):  # a thread: the pipe holds less than the header over the cap
            try:
                for frame in frames:
                    there.send_bytes(frame)
            except OSError:
                pass

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        with pytest.raises(ProtocolError, match=expected):
            receive(here, max_bytes=1 << 20)
        here.close()
        writer.join(timeout=5)
        there.close()
    here, there = Pipe()
    there.send_bytes(json.dumps({"kind": "ok", "value": small, "buffers": 1}).encode())
    there.send_bytes(np.arange(2.0).tobytes())
    assert receive(here)["value"].tolist() == [0.0, 1.0]
