"""Run an implementation under test in a child process, so that a hang, an early exit or a crash is a verdict.

One long-lived worker process per implementation (``python -m involution.conformance.worker``) imports it once
and answers calls sent over a pipe; the suite's properties run in the parent and call it through
:class:`Worker`. A call that takes longer than the time limit kills the worker; a worker that exits (``os._exit``,
``sys.exit``, a segfault in a C extension) is noticed by the end of the pipe. Either raises
:class:`ImplementationDied` naming the call, and the next call starts a fresh worker.

Hand-written rather than pytest-timeout or pytest-forked: pytest-timeout's thread method ends the whole pytest
process (and its signal method cannot interrupt C code), pytest-forked forks per test (unsafe after numba or torch
started threads, and no per-call limit); neither survives ``os._exit`` in the code under test.
"""
from __future__ import annotations

import argparse
import builtins
import os
import subprocess
import sys
from multiprocessing.connection import Connection, Pipe

import numpy as np

# Seconds the worker may take to import the implementation (torch and numba imports on a loaded machine).
LOAD_TIMEOUT = 300.0
# After this many timed-out calls an implementation's remaining calls fail at once instead of waiting again.
MAX_TIMEOUTS = 3


class ImplementationDied(BaseException):
    """The implementation hung past the time limit or its process ended during a call.

    A ``BaseException``, so hypothesis does not shrink it (which would rerun the hang many times) and pytest
    reports it as the test's failure.
    """


class Unpicklable:
    """Stands for a result the worker could not send back (the suite then fails the property on its type)."""

    def __init__(self, description: str):
        self.description = description

    def __repr__(self) -> str:
        return f"<unpicklable result: {self.description}>"


_EXCEPTION_TYPES: dict[tuple, type] = {}


def exception_type(module: str, qualname: str, builtin: type) -> type:
    """A stand-in class named like the implementation's exception, subclassing its nearest builtin base."""
    key = (module, qualname, builtin)
    if key not in _EXCEPTION_TYPES:
        _EXCEPTION_TYPES[key] = type(qualname.rpartition(".")[2], (builtin,), {"__module__": module,
                                                                              "__qualname__": qualname})
    return _EXCEPTION_TYPES[key]


def describe_exception(error: Exception) -> tuple[str, str, str, str]:
    """``(module, qualname, nearest builtin base name, message)``: what the parent needs to re-raise it."""
    builtin = next(cls for cls in type(error).__mro__ if cls.__module__ == "builtins")
    return type(error).__module__, type(error).__qualname__, builtin.__name__, str(error)


def rebuild_exception(module: str, qualname: str, builtin_name: str, message: str) -> Exception:
    """The parent-side exception for :func:`describe_exception`'s tuple; builtins come back as themselves."""
    builtin = getattr(builtins, builtin_name, None)
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)):
        builtin = Exception
    if module == "builtins":
        return builtin(message)
    return exception_type(module, qualname, builtin)(message)


def describe_call(function: str, args: tuple, kwargs: dict) -> str:
    """``forward(x (2, 4, 7, 5) float32, kernel (...) float32, stride=(1, 2), ...)``: the case a worker was on."""
    def show(value):
        if isinstance(value, np.ndarray):
            return f"{tuple(value.shape)} {value.dtype}"
        return repr(value)

    names = ("grad_out", "x", "kernel") if function == "backward" else ("x", "kernel")
    names += ("stride", "padding", "dilation")
    parts = [f"{name} {show(value)}" if isinstance(value, np.ndarray) else f"{name}={show(value)}"
             for name, value in zip(names, args)]
    parts += [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"{function}({', '.join(parts)})"


class Worker:
    """A child process running one implementation; :meth:`call` sends it a call and returns the answer.

    Parameters
    ----------
    spec : str
        What :func:`involution.conformance.backends.load` takes: a project backend name or ``module[:attr]``.
    framework : {"numpy", "torch"}
    device : str
        torch device for the torch framework ("cpu" or "cuda").
    timeout : float
        Seconds one call may take before the worker is killed and the call fails.
    """

    def __init__(self, spec: str, framework: str, device: str, timeout: float):
        self.spec, self.framework, self.device, self.timeout = spec, framework, device, timeout
        self.process: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.timeouts = 0
        self.description: dict | None = None

    def start(self) -> dict:
        """Start the child and return its description of the implementation (``backends.Implementation.describe``)."""
        parent_end, child_end = Pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "involution.conformance.worker", str(child_end.fileno()), self.spec,
             self.framework, self.device],
            pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL)
        child_end.close()
        self.connection = parent_end
        if not parent_end.poll(LOAD_TIMEOUT):
            self.close()
            return self._unavailable(f"import took longer than {LOAD_TIMEOUT:g} s")
        try:
            self.description = parent_end.recv()
        except EOFError:
            status = self._exit_status()
            self.close()
            return self._unavailable(f"its process exited with status {status} while importing it")
        return self.description

    def _unavailable(self, reason: str) -> dict:
        self.description = {"name": self.spec, "available": False, "skip_reason": f"{self.spec} unavailable: {reason}",
                            "has_backward": False, "gradients": None, "declared_limits": {}}
        return self.description

    def _exit_status(self):
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def call(self, function: str, args: tuple, kwargs: dict | None = None):
        """``function`` ("forward" or "backward") of the implementation on ``args``; re-raises what it raised.

        Raises :class:`ImplementationDied` when the call times out or the process ends during it.
        """
        kwargs = kwargs or {}
        if self.timeouts >= MAX_TIMEOUTS:
            raise ImplementationDied(f"not called: {self.timeouts} earlier calls timed out; "
                                     f"{describe_call(function, args, kwargs)}")
        if self.process is None or self.process.poll() is not None:
            if self.start()["skip_reason"]:
                raise ImplementationDied(f"could not restart the implementation: {self.description['skip_reason']}")
        try:
            self.connection.send((function, args, kwargs))
            answered = self.connection.poll(self.timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            answered = True  # the process is gone: recv below reports how it ended
        if not answered:
            self.timeouts += 1
            self.close()
            raise ImplementationDied(f"timed out after {self.timeout:g} s in {describe_call(function, args, kwargs)}")
        try:
            kind, payload = self.connection.recv()
        except (EOFError, ConnectionResetError):
            status = self._exit_status()
            self.close()
            raise ImplementationDied(f"the implementation's process exited with status {status} during "
                                     f"{describe_call(function, args, kwargs)}") from None
        if kind == "raised":
            raise rebuild_exception(*payload)
        return payload

    def close(self) -> None:
        """Stop the child (asking first, killing if it does not stop within a second)."""
        if self.connection is not None:
            try:
                self.connection.send(None)
            except OSError:
                pass
            self.connection.close()
            self.connection = None
        if self.process is not None:
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def _reply(connection: Connection, kind: str, payload) -> None:
    try:
        connection.send((kind, payload))
    except Exception as error:  # the result (or exception) would not pickle: say what it was instead
        if kind == "ok":
            connection.send(("ok", Unpicklable(f"{type(payload).__name__} ({type(error).__name__}: {error})")))
        else:
            connection.send(("raised", ("builtins", "RuntimeError", "RuntimeError", f"unpicklable exception: {error}")))


def serve(connection: Connection, spec: str, framework: str, device: str) -> None:
    """The child's loop: load the implementation, send its description, answer calls until told to stop."""
    from involution.conformance.backends import load_here

    implementation = load_here(spec, framework, device)
    if "torch" in sys.modules:  # the suite's tensors are tiny: waking a thread pool costs more than the work
        sys.modules["torch"].set_num_threads(1)
    connection.send(implementation.describe())
    if implementation.skip_reason:
        return
    functions = {"forward": implementation.forward, "backward": implementation.backward}
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        function, args, kwargs = request
        try:
            result = functions[function](*args, **kwargs)
        except Exception as error:  # the implementation's own exception goes back to the parent
            _reply(connection, "raised", describe_exception(error))
        else:
            _reply(connection, "ok", result)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="conformance worker (started by the suite, not by hand)")
    parser.add_argument("fd", type=int)
    parser.add_argument("spec")
    parser.add_argument("framework")
    parser.add_argument("device")
    args = parser.parse_args(argv)
    serve(Connection(args.fd), args.spec, args.framework, args.device)


if __name__ == "__main__":  # run from the module's importable name, so that Unpicklable pickles as its own
    from involution.conformance import worker

    worker.main()
