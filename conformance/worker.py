"""Run an implementation under test in a child process, so that a hang, an early exit or a crash is a verdict.

One long-lived worker per implementation (``python -m involution.conformance.worker``) imports it once and
answers calls sent over a pipe; the suite's properties run in the parent and call it through :class:`Worker`.

Guarantees (docs/conformance.md, "What the worker can and cannot do"; tests/test_conformance_hostile.py):

- **Data only.** The pipe carries JSON headers and raw array bytes (:mod:`~involution.conformance.channel`); the
  parent never unpickles anything, so nothing the implementation returns, raises or declares runs code in it.
- **Inputs.** The worker compares its copies of the inputs before and after each call and sends back the ones
  that changed; the parent writes them into its own arrays, so "inputs unmodified" is judged as in-process.
- **Containment.** The worker starts in its own session and process group. It is a small guard process that
  forks the process running the implementation, limits that one's address space (``memory_limit``), adopts
  every process it leaves behind (Linux ``PR_SET_CHILD_SUBREAPER``) and kills them all when it ends, is stopped,
  or loses its parent. Its stdout and stderr go to a capped file (:class:`Output`), whose tail is shown with a
  failure. A call past ``timeout`` seconds, or an import past ``import_timeout``, stops the whole group.

A call that times out or whose process ends raises :class:`ImplementationDied` naming the call (and the signal,
with its likely cause); the next call starts a fresh worker, until :data:`MAX_ENDS` ends or :data:`MAX_TIMEOUTS`
timeouts, after which the implementation's remaining calls fail at once instead of importing it again.

Hand-written rather than pytest-timeout or pytest-forked: pytest-timeout's thread method ends the whole pytest
process (and its signal method cannot interrupt C code), pytest-forked forks per test (unsafe after numba or torch
started threads, and no per-call limit); neither survives ``os._exit`` in the code under test.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection, Pipe

import numpy as np

from involution.conformance.channel import (
    ProtocolError, Unsendable, clean_text, receive, send,  # noqa: F401 (Unsendable: what non-data results become)
)

DEFAULT_IMPORT_TIMEOUT = 300.0  # seconds to import the implementation (torch and numba on a loaded machine)
DEFAULT_MEMORY_LIMIT_GIB = 4.0  # the worker's address space; torch and numba need under 1 GiB of it
MAX_TIMEOUTS = 3  # after this many timed-out calls the remaining calls fail at once
MAX_ENDS = 3  # after the process ended this many times the remaining calls fail at once (no re-import per case)
OUTPUT_CAP = 1 << 20  # bytes of the worker's stdout and stderr kept in its output file
TAIL_LINES = 15
REPLY_FACTOR = 16  # a call's reply may hold this many times its inputs' bytes (result, gradients, changed inputs)
SIGNAL_CAUSES = {
    "SIGSEGV": "a segmentation fault: an out-of-bounds access in compiled code, or an allocation past the "
               "memory limit",
    "SIGBUS": "a bus error: an access outside a mapped file or a misaligned access in compiled code",
    "SIGFPE": "an arithmetic fault in compiled code, e.g. an integer division by zero",
    "SIGABRT": "an abort: a failed assertion in C or C++ code, or an allocation past the memory limit",
    "SIGKILL": "killed from outside: most likely the system's out-of-memory killer, or the memory limit",
    "SIGILL": "an illegal instruction: code compiled for another CPU",
}
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
_CAP_SYS_PTRACE = 19


class ImplementationDied(BaseException):
    """The implementation hung past the time limit, its process ended during a call, or it broke the channel.

    A ``BaseException``, so hypothesis does not shrink it (which would rerun the hang many times) and pytest
    reports it as the test's failure.
    """


def describe_status(returncode: int | None, memory_limit_gib: float) -> str:
    """``status 3``, or ``signal SIGSEGV (a segmentation fault: ...)`` for a process a signal ended."""
    if returncode is None or returncode >= 0:
        return f"status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    cause = SIGNAL_CAUSES.get(name, "")
    if cause and "memory limit" in cause:
        cause += f" of {memory_limit_gib:g} GiB (--memory-limit)"
    return f"signal {name}" + (f" ({cause})" if cause else "")


_EXCEPTION_TYPES: dict[tuple, type] = {}


def exception_type(module: str, qualname: str, builtin: type) -> type:
    """A stand-in class named like the implementation's exception, subclassing its nearest builtin base."""
    key = (module, qualname, builtin)
    if key not in _EXCEPTION_TYPES:
        _EXCEPTION_TYPES[key] = type(qualname.rpartition(".")[2] or "Exception", (builtin,),
                                     {"__module__": module, "__qualname__": qualname})
    return _EXCEPTION_TYPES[key]


def describe_exception(error: BaseException) -> dict:
    """What the parent needs to re-raise an implementation's exception: names, message and traceback, as text."""
    builtin = next(cls for cls in type(error).__mro__ if cls.__module__ == "builtins")
    try:
        message = str(error)
    except Exception as failure:  # an exception whose __str__ fails is still reported by its type
        message = f"<str() of the exception failed with {type(failure).__name__}>"
    return {"module": type(error).__module__, "qualname": type(error).__qualname__, "builtin": builtin.__name__,
            "message": message, "traceback": "".join(traceback.format_exception(error))}


def rebuild_exception(error: dict, memory_limit_gib: float) -> Exception:
    """The parent-side exception for :func:`describe_exception`'s dict (strings only; builtins come back as
    themselves, an implementation's own class as a stand-in of its builtin base). The worker's traceback text is
    kept as ``worker_traceback``. Raises :class:`ProtocolError` when the dict is not of that form."""
    if type(error) is not dict or not all(type(error.get(key)) is str for key in
                                          ("module", "qualname", "builtin", "message", "traceback")):
        raise ProtocolError("an exception report without its names, message and traceback")
    builtin = getattr(builtins, error["builtin"], None)
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)):
        builtin = Exception
    message = error["message"]
    if builtin is MemoryError:
        message += f" (the worker's address space is limited to {memory_limit_gib:g} GiB: --memory-limit)"
    rebuilt = builtin(message) if error["module"] == "builtins" else \
        exception_type(error["module"][:200], error["qualname"][:200], builtin)(message)
    rebuilt.worker_traceback = error["traceback"]
    return rebuilt


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


def reply_bytes(args: tuple) -> int:
    """The most array bytes a call's reply may hold: its result and changed inputs are the size of its inputs, so
    a few times theirs (and a megabyte for the smallest cases); a larger reply is refused before it is read."""
    inputs = sum(arg.nbytes for arg in args if isinstance(arg, np.ndarray))
    return (1 << 20) + REPLY_FACTOR * inputs


def worker_environment() -> dict:
    """The environment of a worker: this one, with ``PYTHONPATH`` this process's path and the working directory
    first (where ``--impl`` modules are found; only workers get it, the parent's own path lacks it)."""
    path = [os.getcwd()] + [entry for entry in sys.path if entry and entry != os.getcwd()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def stop_process(process: subprocess.Popen) -> None:
    """Stop a worker's guard (which kills what it adopted), kill its process group, then every stray process."""
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        process.terminate()  # the guard kills the implementation and everything it started
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _LIVE.discard(process.pid)
    kill_strays()  # what escaped the guard (a killed guard kills nothing) was re-parented here


def run_opcheck(spec: str, device: str, timeout: float,
                memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB) -> dict:
    """``torch.library.opcheck`` of implementation ``spec`` (:mod:`~involution.conformance.opcheck`) under the
    worker's guard: its own session, the memory limit, output captured and capped, every process it leaves
    killed; its result comes back through the channel (a JSON header), never from its output.

    Returns ``{"op": name or None, "checks": {...}}``; raises :class:`ImplementationDied` on a timeout, a process
    that ended without a result, or a message outside the channel's format. The result is computed in the
    implementation's own process: it judges an honest registration, and a hostile implementation could forge it.
    """
    contain()
    parent_end, child_end = Pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "involution.conformance.worker", str(child_end.fileno()), spec, "torch", device,
         str(int(memory_limit_gib * (1 << 30))), "--opcheck"],
        pass_fds=[child_end.fileno()], env=worker_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    _LIVE.add(process.pid)
    child_end.close()
    output = Output(process.stdout)

    def died(what: str) -> ImplementationDied:
        tail = output.tail()
        return ImplementationDied(f"opcheck of {spec} {what}" + (f"\n{tail}" if tail else ""))

    try:
        if not parent_end.poll(timeout):
            raise died(f"timed out after {timeout:g} s")
        try:
            message = receive(parent_end, max_bytes=0)
        except EOFError:
            try:
                returncode = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                returncode = None
            raise died(f"could not run: its process exited with {describe_status(returncode, memory_limit_gib)}") \
                from None
        except ProtocolError as error:
            raise died(f"sent a message outside the channel's format ({error})") from None
        if message.get("kind") != "opcheck" or type(message.get("result")) is not dict:
            raise died("sent no opcheck result")
        return message["result"]
    finally:
        try:
            send(parent_end, {"kind": "stop"})
        except OSError:
            pass
        parent_end.close()
        stop_process(process)
        output.close()


class Output:
    """The worker's stdout and stderr, read by a thread: the first :data:`OUTPUT_CAP` bytes to a temporary file
    (deleted by :meth:`close`), the last lines kept for :meth:`tail`, the rest counted and dropped (a chatty
    implementation neither blocks on a full pipe nor fills the disk or the terminal)."""

    def __init__(self, stream):
        self.file = tempfile.NamedTemporaryFile(prefix="involution-conformance-worker-", suffix=".log",
                                                delete=False)
        self.path = self.file.name
        self.total = 0
        self.last = collections.deque(maxlen=64)  # recent chunks
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(1 << 16), b""):
            if self.total < OUTPUT_CAP:
                self.file.write(chunk[:OUTPUT_CAP - self.total])
                self.file.flush()
            self.total += len(chunk)
            self.last.append(chunk)
        stream.close()

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines written, cleaned of escape codes; empty if nothing was written."""
        self.thread.join(timeout=0.5)
        text = clean_text(b"".join(self.last)[-8192:].decode("utf-8", "replace"), 4000)
        kept = text.rstrip().splitlines()[-lines:]
        if not kept:
            return ""
        return f"worker output ({self.total} bytes, last {len(kept)} lines):\n" + "\n".join(kept)

    def close(self) -> None:
        self.thread.join(timeout=2)
        self.file.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


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
        Seconds one call may take before the worker is stopped and the call fails.
    import_timeout : float
        Seconds the worker may take to start and import the implementation.
    memory_limit_gib : float
        The address-space limit of the process running the implementation, in GiB (``RLIMIT_AS``).
    """

    def __init__(self, spec: str, framework: str, device: str, timeout: float,
                 import_timeout: float = DEFAULT_IMPORT_TIMEOUT, memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB):
        self.spec, self.framework, self.device, self.timeout = spec, framework, device, timeout
        self.import_timeout, self.memory_limit_gib = import_timeout, memory_limit_gib
        self.process: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.output: Output | None = None
        self.timeouts = self.ends = 0
        self.last_end = ""
        self.description: dict | None = None

    def start(self) -> dict:
        """Start the child and return its description of the implementation (``backends.Implementation.describe``)."""
        from involution.conformance.backends import checked_description

        contain()
        parent_end, child_end = Pipe()
        env = worker_environment()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "involution.conformance.worker", str(child_end.fileno()), self.spec,
             self.framework, self.device, str(int(self.memory_limit_gib * (1 << 30)))],
            pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE.add(self.process.pid)
        child_end.close()
        self.connection = parent_end
        self.output = Output(self.process.stdout)
        if not parent_end.poll(self.import_timeout):
            self.close()
            return self._unavailable(f"import took longer than {self.import_timeout:g} s (--import-timeout)")
        try:
            message = receive(parent_end)
            self.description = checked_description(message.get("description"), self.spec)
        except EOFError:
            status, tail = self._ended()
            return self._unavailable(f"its process exited with {status} while importing it{tail}")
        except (ProtocolError, TypeError, ValueError) as error:
            self.close()
            return self._unavailable(f"its worker sent a description outside the channel's format: {error}")
        return self.description

    def _unavailable(self, reason: str) -> dict:
        self.description = {"name": self.spec, "available": False, "skip_reason": f"{self.spec} unavailable: {reason}",
                            "has_backward": False, "gradients": None, "declared_limits": {}}
        return self.description

    def _ended(self) -> tuple[str, str]:
        """``(status text, "\\n" + output tail or "")`` of a worker whose pipe closed; stops what is left of it."""
        try:
            returncode = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            returncode = None
        status = describe_status(returncode, self.memory_limit_gib)
        tail = self.output.tail() if self.output else ""
        self.close()
        return status, f"\n{tail}" if tail else ""

    def call(self, function: str, args: tuple, kwargs: dict | None = None):
        """``function`` ("forward" or "backward") of the implementation on ``args``; re-raises what it raised.

        Input arrays the implementation changed are changed here too. Raises :class:`ImplementationDied` when
        the call times out, the process ends during it, or the worker breaks the channel's format.
        """
        kwargs = kwargs or {}
        where = describe_call(function, args, kwargs)
        if self.timeouts >= MAX_TIMEOUTS:
            raise ImplementationDied(f"not called: {self.timeouts} earlier calls timed out; {where}")
        if self.ends >= MAX_ENDS:
            raise ImplementationDied(f"not called: the implementation's process ended {self.ends} times "
                                     f"(last: {self.last_end}); {where}")
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                self.close()
            if self.start()["skip_reason"]:
                raise ImplementationDied(f"could not restart the implementation: {self.description['skip_reason']}")
        try:
            send(self.connection, {"kind": "call", "function": function}, [list(args), kwargs])
            answered = self.connection.poll(self.timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            answered = True  # the process is gone: receive below reports how it ended
        if not answered:
            self.timeouts += 1
            tail = self.output.tail() if self.output else ""
            self.close()
            raise ImplementationDied(f"timed out after {self.timeout:g} s in {where}" + (f"\n{tail}" if tail else ""))
        raised = result = None
        try:
            message = receive(self.connection, reply_bytes(args))
            if message.get("kind") == "raised":
                raised = rebuild_exception(message.get("error"), self.memory_limit_gib)
            elif message.get("kind") != "ok" or type(message.get("value")) is not list or len(message["value"]) != 2:
                raise ProtocolError(f"unexpected reply {str(message.get('kind'))[:40]!r}")
            else:
                result, modified = message["value"]
                self._write_back(args, modified)
        except (EOFError, ConnectionResetError):
            self.ends += 1
            status, tail = self._ended()
            self.last_end = status
            raise ImplementationDied(f"the implementation's process exited with {status} during {where}{tail}") \
                from None
        except ProtocolError as error:
            self.close()
            self.ends += 1
            self.last_end = "it broke the channel's format"
            raise ImplementationDied(f"the implementation's worker sent a message outside the channel's format "
                                     f"({error}) during {where}") from None
        if raised is not None:
            raise raised
        return result

    @staticmethod
    def _write_back(args: tuple, modified) -> None:
        """Copy the worker's changed inputs (``[[index, array], ...]``) into the caller's ``args``."""
        if type(modified) is not list:
            raise ProtocolError("no list of modified inputs")
        for entry in modified:
            if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not int \
                    or not 0 <= entry[0] < len(args):
                raise ProtocolError("a modified input without a valid index")
            index, array = entry
            target = args[index]
            if not (isinstance(target, np.ndarray) and isinstance(array, np.ndarray)
                    and array.shape == target.shape and array.dtype == target.dtype):
                raise ProtocolError(f"modified input {index} does not match the array sent")
            if target.flags.writeable:
                np.copyto(target, array)

    def close(self) -> None:
        """Stop the worker: ask it to end, then stop its guard (which kills every process it adopted), then kill
        its process group."""
        if self.connection is not None:
            try:
                send(self.connection, {"kind": "stop"})
            except OSError:
                pass
            self.connection.close()
            self.connection = None
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self.output is not None:
            self.output.close()
            self.output = None


def serve(connection: Connection, spec: str, framework: str, device: str) -> None:
    """The implementation's process: load it, send its description, answer calls until told to stop."""
    from involution.conformance.backends import load_here

    implementation = load_here(spec, framework, device)
    if "torch" in sys.modules:  # the suite's tensors are tiny: waking a thread pool costs more than the work
        sys.modules["torch"].set_num_threads(1)
    send(connection, {"kind": "description", "description": implementation.describe()})
    if implementation.skip_reason:
        return
    functions = {"forward": implementation.forward, "backward": implementation.backward}
    while True:
        try:
            message = receive(connection)
        except EOFError:
            return
        if message.get("kind") != "call":
            return
        args, kwargs = message["value"]
        before = {index: arg.tobytes() for index, arg in enumerate(args) if isinstance(arg, np.ndarray)}
        try:
            result = functions[message["function"]](*args, **kwargs)
        except Exception as error:  # the implementation's own exception goes back to the parent, as text
            send(connection, {"kind": "raised", "error": describe_exception(error)})
            continue
        modified = [[index, args[index]] for index, data in before.items() if args[index].tobytes() != data]
        send(connection, {"kind": "ok"}, [result, modified])


def _prctl(option: int, value: int) -> None:
    """Linux ``prctl(option, value)``; nothing elsewhere (the guard then cannot adopt escaped processes)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def drop_privileges() -> None:
    """In the worker (Linux): no new privileges through exec (``PR_SET_NO_NEW_PRIVS``), and ``CAP_SYS_PTRACE``
    dropped from the bounding, effective, permitted and inheritable sets, so that even as root the implementation
    cannot attach to, or open the memory of, a process that is not dumpable (the CLI: :func:`undumpable`). Best
    effort: a step the kernel refuses is skipped."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PR_CAPBSET_DROP, _CAP_SYS_PTRACE, 0, 0, 0)  # fails (EPERM) without CAP_SETPCAP: nothing to drop
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}: capabilities 0-31, 32-63
    if libc.capget(header, data) == 0:
        for index in (0, 1, 2):
            data[index] &= ~(1 << _CAP_SYS_PTRACE)
        libc.capset(header, data)


def undumpable() -> int:
    """Make this process not dumpable (Linux ``PR_SET_DUMPABLE`` 0): processes of the same user without
    ``CAP_SYS_PTRACE`` can no longer attach to it or open ``/proc/<pid>/mem``. Returns the previous setting (for
    :func:`restore_dumpable`), 1 elsewhere."""
    if not sys.platform.startswith("linux"):
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    return previous if previous >= 0 else 1


def restore_dumpable(previous: int) -> None:
    """Undo :func:`undumpable` (for a suite run inside a longer-lived process, e.g. the tests)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, previous, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from ``/proc``'s parent ids; empty where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _kill(pids) -> None:
    """SIGKILL each of ``pids``; one already gone, or not ours to signal, is passed over."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_descendants() -> None:
    """Kill every process below this one (the guard adopted the escaped ones) and reap them."""
    for _ in range(50):
        alive = descendants(os.getpid())
        if not alive:
            return
        _kill(alive)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.01)
            except ChildProcessError:
                break


_LIVE: set[int] = set()  # guard pids of this process's running workers (their processes are theirs to stop)
_BASELINE: set[int] | None = None  # this process's descendants when containment began (not the suite's to kill)


def contain(restart: bool = False) -> None:
    """Make this process (the CLI, or whatever runs the suite) a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``):
    a process that escapes a worker's guard (a double fork after the guard was killed) is re-parented here instead
    of to init, where :func:`kill_strays` finds it. ``restart`` takes a new snapshot of the descendants that are not
    the suite's (those alive now, which it never kills); otherwise the first snapshot stays."""
    global _BASELINE
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if _BASELINE is None or restart:
        _BASELINE = set(descendants(os.getpid())) - _live_tree()
        if not restart:
            import atexit

            atexit.register(kill_strays, True)


def _live_tree() -> set[int]:
    tree = set()
    for pid in _LIVE:
        tree.add(pid)
        tree.update(descendants(pid))
    return tree


def kill_strays(everything: bool = False) -> None:
    """Kill (and reap) every descendant of this process that the suite started or adopted and no running worker
    owns: processes left by a worker that ended or was killed. ``everything`` also kills the running workers' (at
    the end of a run). Descendants alive before :func:`contain` are left alone."""
    if _BASELINE is None:
        return
    for _ in range(50):
        keep = _BASELINE | (set() if everything else _live_tree())
        strays = [pid for pid in descendants(os.getpid()) if pid not in keep]
        if not strays:
            return
        _kill(strays)
        time.sleep(0.02)
        for pid in strays:  # adopted ones are children here now: reap them (the others' parents do)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def opcheck_serve(connection: Connection, spec: str, device: str) -> None:
    """The opcheck process: run :func:`involution.conformance.opcheck.run`, send its result as a JSON header."""
    from involution.conformance.opcheck import run

    send(connection, {"kind": "opcheck", "result": run(spec, device)})


def guard(fd: int, spec: str, framework: str, device: str, memory_limit: int, opcheck: bool = False) -> None:
    """Fork the process that runs the implementation, wait for it, then kill whatever it left behind, and end
    the way it ended (its exit status, or the same signal)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the CLI gone: clean up as if stopped
    drop_privileges()
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        code = 0
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
            if opcheck:
                opcheck_serve(Connection(fd), spec, device)
            else:
                serve(Connection(fd), spec, framework, device)
        except SystemExit as exit_request:
            code = exit_request.code if isinstance(exit_request.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(fd)  # only the implementation's process holds the pipe: its end is the parent's EOF

    def stop(signum, frame):
        kill_descendants()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    kill_descendants()
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="conformance worker (started by the suite, not by hand)")
    parser.add_argument("fd", type=int)
    parser.add_argument("spec")
    parser.add_argument("framework")
    parser.add_argument("device")
    parser.add_argument("memory_limit", type=int, help="bytes of address space for the implementation's process")
    parser.add_argument("--opcheck", action="store_true", help="run torch.library.opcheck instead of serving calls")
    args = parser.parse_args(argv)
    guard(args.fd, args.spec, args.framework, args.device, args.memory_limit, args.opcheck)


if __name__ == "__main__":  # run from the module's importable name, so that the suite's classes are its own
    from involution.conformance import worker

    worker.main()
