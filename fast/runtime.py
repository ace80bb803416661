"""numba's process-wide settings for the fast CPU kernels: the threading layer and the on-disk cache.

Imported by :mod:`involution.fast.cpu_blocks` (which every CPU kernel module imports) and :mod:`involution.fast.index`
before they compile anything.
Why these choices: docs/threading.md.

* Threading layer: TBB (``pip install tbb``, part of the ``fast`` extra), the one numba layer that is both
  fork-safe and thread-safe; pip puts ``libtbb.so.12`` in ``<prefix>/lib``, where numba does not look
  (numba issues #6108, #7148), so it is loaded here from the installed ``tbb`` distribution. Without TBB the
  ``workqueue`` layer runs (fork-safe) and :data:`CALL_LOCK` serialises calls (it is not thread-safe). A layer
  chosen by the user (``NUMBA_THREADING_LAYER``, ``NUMBA_THREADING_LAYER_PRIORITY``) is respected.
* Cache: numba's own order (``NUMBA_CACHE_DIR``, ``__pycache__`` beside the kernels, the user's cache folder), then,
  for this folder's kernels only, a folder of this user in the system's temporary directory
  (:class:`TemporaryFolderLocator`), so that a read-only install with a read-only home still caches; the process
  environment is left as it is. :data:`CACHE` is False, with one warning, when none of them is writable; the
  kernels then compile in memory on first use instead of failing to import. :func:`cache_folder` says where.
* Compile notice: the first call that compiles kernels of this folder for a dtype says so on stderr, once per
  process and dtype (:class:`CompileNotice`, a numba ``"numba:compile"`` event listener: loading the cache is
  silent). ``involution warmup`` compiles ahead.
* Dynamic threads: each kernel call runs on at most as many threads as there are cores other processes leave free
  (:class:`FreeCores`, :func:`call_threads`), so that a busy machine does not make a parallel region wait for a
  descheduled thread; ``INVOLUTION_DYNAMIC_THREADS=0`` (or :data:`DYNAMIC_THREADS` = False) turns it off.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.metadata
import os
import sys
import tempfile
import threading
import time
import warnings

import numba
from numba.core import caching, event

# Layers that may run parallel kernels from several Python threads at once (numba docs, "threading layers").
THREAD_SAFE_LAYERS = ("tbb", "omp")
# Held around every kernel call while the running (or still unknown) layer is not thread-safe.
CALL_LOCK = threading.Lock()


def load_pip_tbb() -> bool:
    """Load the ``libtbb.so.12`` of the installed ``tbb`` distribution (global symbols); True when loaded."""
    try:
        files = importlib.metadata.files("tbb") or ()
    except importlib.metadata.PackageNotFoundError:
        return False
    for file in files:
        if file.name.startswith("libtbb.so.12"):
            try:
                ctypes.CDLL(str(file.locate().resolve()), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def choose_threading_layer() -> None:
    """Make numba try TBB, then ``workqueue`` (fork-safe), then OpenMP, at its first parallel launch.

    Left alone when the user set ``NUMBA_THREADING_LAYER`` or ``NUMBA_THREADING_LAYER_PRIORITY``, or when
    numba's threads already run (the layer cannot change then).
    """
    from numba.np.ufunc import parallel

    load_pip_tbb()  # also serves a user who asked for "tbb" or "safe"
    chosen_by_user = {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ)
    if not chosen_by_user and not parallel._is_initialized:
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]


def running_layer() -> str | None:
    """The threading layer numba launched (``numba.threading_layer()``), None before the first parallel call."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def call_guard():
    """A context for one kernel call: :data:`CALL_LOCK` unless the running layer is known to be thread-safe."""
    return contextlib.nullcontext() if running_layer() in THREAD_SAFE_LAYERS else CALL_LOCK


FOLDER = os.path.dirname(os.path.abspath(__file__))  # the kernels' folder


def _cache_probe():
    """Stands for the kernels of this folder when asking numba where it would cache them."""


class TemporaryFolderLocator(caching.UserWideCacheLocator):
    """numba's user-wide cache locator, rooted in ``<temporary directory>/involution-numba-<user id>`` and only for
    the functions of this folder: the last place tried, after numba's own (``tempfile.gettempdir()``)."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
        self._cache_path = os.path.join(tempfile.gettempdir(), f"involution-numba-{user}",
                                        self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != FOLDER:
            return None
        return super().from_function(py_func, py_file)


def add_cache_locator() -> None:
    """Append :class:`TemporaryFolderLocator` to numba's locators (after its own; once)."""
    locators = caching.CacheImpl._locator_classes
    if TemporaryFolderLocator not in locators:
        locators.append(TemporaryFolderLocator)


def cache_folder() -> str | None:
    """The folder numba caches this folder's kernels in, None when there is none writable."""
    from numba.core.caching import FunctionCache

    try:
        return FunctionCache(_cache_probe).cache_path
    except RuntimeError:
        return None


def display_path(path: str) -> str:
    """``path`` relative to the current folder when inside it, else with the home folder as ``~``."""
    cwd, home = os.getcwd(), os.path.expanduser("~")
    if path == cwd or path.startswith(cwd + os.sep):
        return os.path.relpath(path, cwd)
    if home not in ("", os.sep) and path.startswith(home + os.sep):
        return "~" + path[len(home):]
    return path


class CompileNotice(event.Listener):
    """Says on stderr, once per process and dtype, that kernels of this folder compile and where they are cached.

    Listens to numba's ``"numba:compile"`` events, which start only after the on-disk cache missed; ``announced``
    holds the dtypes said so far.
    """

    def __init__(self, stream=None):
        self.stream = stream
        self.announced = set()

    def on_start(self, event_):
        dispatcher = event_.data["dispatcher"]
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith(__name__.rpartition(".")[0] + "."):
            return
        dtypes = [str(arg.dtype) for arg in event_.data["args"] if isinstance(arg, numba.types.Array)]
        if not dtypes or dtypes[0] in self.announced:
            return
        self.announced.add(dtypes[0])
        folder = cache_folder() if CACHE else None
        where = f"cached in {display_path(folder)}" if folder else \
            "not cached: no writable folder, so again in every new process"
        print(f"involution: compiling the fast CPU kernels for {dtypes[0]}, once per machine; {where}",
              file=self.stream or sys.stderr, flush=True)

    def on_end(self, event_):
        pass


def can_cache() -> bool:
    """True when numba finds a writable cache directory for this folder's functions; else one warning, False."""
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(_cache_probe)
    except RuntimeError as error:
        warnings.warn(f"involution.fast: numba cannot write its cache ({error}); the kernels compile in memory "
                      f"in every new process. Set NUMBA_CACHE_DIR to a writable directory to cache them.",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


class FreeCores:
    """How many of this process's cores other processes leave free, sampled from Linux's ``/proc/stat``.

    Over each window of at least ``interval`` seconds (refreshed by the calls that ask, never by a thread of its
    own): the busy time of the CPUs this process may run on (``os.sched_getaffinity``; user, nice, system, irq,
    softirq and steal in ``/proc/stat``, clock ticks of ``os.sysconf("SC_CLK_TCK")``) minus this process's own CPU
    time (``time.process_time``, all its threads: numba's and torch's included), divided by the window's length,
    is the number of cores others kept busy. Ticks are 10 ms on most kernels, so a 0.1 s window is exact to about
    0.2 core per CPU; the answer rounds. Where ``/proc/stat`` cannot be read (not Linux), every core counts as
    free.

    Parameters
    ----------
    interval : float
        Seconds between samples (default 0.1).
    read : callable, optional
        ``read() -> (seconds, busy_seconds, process_seconds) | None``: a sample; default :meth:`read_proc_stat`
        (tests pass their own).
    cpus : int, optional
        Cores this process may use (default: its affinity set, or ``os.cpu_count()``).

    A forked child must call :meth:`restart` (its ``process_time`` starts again from 0); this module registers
    that for :data:`FREE_CORES`.

    ``choices`` counts the answers of :meth:`threads` by thread count (a ``collections.Counter``; benchmarks clear
    and read it to see how many calls ran on how many threads; not exact when Python threads ask at once).
    """

    def __init__(self, interval: float = 0.1, read=None, cpus: int | None = None):
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        self.cpu_ids = frozenset(affinity)
        self.cpus = len(self.cpu_ids) if cpus is None else cpus
        self.interval = interval
        self.read = self.read_proc_stat if read is None else read
        self.choices = collections.Counter()
        self.restart()

    def restart(self) -> None:
        """Forget the last window: take a fresh sample, count no core as busy."""
        self.lock = threading.Lock()  # a fork may have copied it held
        self.sample = self.read()
        self.busy = 0.0  # cores other processes kept busy in the last window

    def read_proc_stat(self):
        """``(monotonic seconds, busy seconds of this process's CPUs, this process's CPU seconds)``, or None."""
        try:
            with open("/proc/stat", "rb") as file:
                lines = file.read().split(b"\n")
            ticks_per_second = os.sysconf("SC_CLK_TCK")
            busy = 0
            for line in lines[1:]:  # cpu0, cpu1, ... after the all-CPU line
                if not line.startswith(b"cpu"):
                    break
                name, *fields = line.split()
                if int(name[3:]) in self.cpu_ids:
                    user, nice, system, idle, iowait, irq, softirq, steal = (int(field) for field in fields[:8])
                    busy += user + nice + system + irq + softirq + steal
        except (OSError, ValueError, AttributeError):  # no /proc/stat, or one this parser does not know
            return None
        return time.monotonic(), busy / ticks_per_second, time.process_time()

    def threads(self, requested: int) -> int:
        """``requested`` threads while other processes leave every core free; else at most the free cores (at
        least 1). A ``requested`` above the core count is kept on an idle machine (the user's choice)."""
        previous = self.sample
        if previous is not None and time.monotonic() - previous[0] >= self.interval and self.lock.acquire(False):
            try:
                current = self.read()
                if current is not None and current[0] > previous[0]:
                    self.busy = self.others_busy(previous, current)
                    self.sample = current
            finally:
                self.lock.release()
        busy = int(self.busy + 0.5)
        chosen = requested if busy == 0 else max(1, min(requested, self.cpus - busy))
        self.choices[chosen] += 1
        return chosen

    @staticmethod
    def others_busy(previous, current) -> float:
        """Cores other processes kept busy on average between two samples of ``read`` (later second)."""
        others = (current[1] - previous[1]) - (current[2] - previous[2])
        return max(0.0, others / (current[0] - previous[0]))


# Dynamic threads (docs/threading.md "Busy machines"): on unless INVOLUTION_DYNAMIC_THREADS=0.
DYNAMIC_THREADS = os.environ.get("INVOLUTION_DYNAMIC_THREADS", "1") != "0"
FREE_CORES = FreeCores()
if hasattr(os, "register_at_fork"):  # a child's process_time starts again from 0
    os.register_at_fork(after_in_child=FREE_CORES.restart)


@contextlib.contextmanager
def dynamic_threads(enabled: bool):
    """A block with :data:`DYNAMIC_THREADS` set to ``enabled``, the previous setting restored after (also when the
    block raises). Process-wide, like the setting itself: for benchmarks and tests, not for code that other threads
    run at the same time."""
    global DYNAMIC_THREADS
    previous, DYNAMIC_THREADS = DYNAMIC_THREADS, bool(enabled)
    try:
        yield
    finally:
        DYNAMIC_THREADS = previous


@contextlib.contextmanager
def call_threads():
    """A context for one kernel call: numba's thread count lowered to :data:`FREE_CORES`' answer while
    :data:`DYNAMIC_THREADS`, restored after (numba's count is per calling thread); yields the count in force.
    Results do not depend on it (bitwise identical for any thread count)."""
    requested = numba.get_num_threads()
    chosen = FREE_CORES.threads(requested) if DYNAMIC_THREADS else requested
    if chosen == requested:
        yield requested
        return
    numba.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        numba.set_num_threads(requested)


choose_threading_layer()
add_cache_locator()
CACHE = can_cache()
COMPILE_NOTICE = CompileNotice()
event.register("numba:compile", COMPILE_NOTICE)
