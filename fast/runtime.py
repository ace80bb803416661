"""numba's process-wide settings for the fast CPU kernels: the threading layer and the on-disk cache.

Imported by :mod:`involution.fast.cpu_kernels` and :mod:`involution.fast.index` before they compile anything.
Why these choices: docs/threading.md.

* Threading layer: TBB (``pip install tbb``, part of the ``fast`` extra), the one numba layer that is both
  fork-safe and thread-safe; pip puts ``libtbb.so.12`` in ``<prefix>/lib``, where numba does not look
  (numba issues #6108, #7148), so it is loaded here from the installed ``tbb`` distribution. Without TBB the
  ``workqueue`` layer runs (fork-safe) and :data:`CALL_LOCK` serialises calls (it is not thread-safe). A layer
  chosen by the user (``NUMBA_THREADING_LAYER``, ``NUMBA_THREADING_LAYER_PRIORITY``) is respected.
* Cache: :data:`CACHE` is False, with one warning, when numba has nowhere to write its cache (read-only install
  and home directories); the kernels then compile in memory on first use instead of failing to import.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import threading
import warnings

import numba

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


def _cache_probe():
    """Stands for the kernels of this folder when asking numba where it would cache them."""


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


choose_threading_layer()
CACHE = can_cache()
