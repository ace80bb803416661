"""A kernel's parallel loop on the threads of a GNU OpenMP runtime already in the process: PyTorch's.

PyTorch runs its CPU operators on the thread pool of its own GNU OpenMP runtime (``torch/lib/libgomp.so.1`` in the
Linux wheels). After each parallel region those threads keep spinning for a while before they sleep (libgomp's
``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY``), so numba's threads (TBB, ``workqueue``, or numba's OpenMP layer, which
links the system's libgomp: a second runtime with a second pool) share the cores with them whenever a numba kernel
follows a torch operator, as every involution layer's op follows its kernel generation's convolution. Run on
torch's runtime instead, the kernel's region gets the very threads torch's operator just used, and nothing spins
beside it.

The protocol: the kernel is an ordinary numba function of arrays that takes its units of work from an atomic counter
(:func:`fetch_add`; dynamic scheduling, so whichever thread is free takes the next unit). A ``numba.cfunc`` of
signature ``void(void*)`` receives one pointer to an int64 *argument block* (the counter, the arrays' addresses and
shapes, the hyper-parameters), rebuilds the arrays with ``numba.carray`` over :func:`pointer` and calls the kernel;
:meth:`Runtime.run` runs that cfunc on ``threads`` threads of the runtime with ``GOMP_parallel`` (the calling thread
is one of them; the call returns when all have returned; ctypes releases the GIL meanwhile). Results do not depend
on which thread ran which unit.

GNU OpenMP's pool does not survive ``fork()``: :attr:`Runtime.usable` is False in a forked child, where callers run
numba's own threads (TBB is fork-safe) instead.
"""
from __future__ import annotations

import ctypes
import functools
import os

from numba.core import types
from numba.core.extending import intrinsic


@intrinsic
def fetch_add(typingctx, counter, value):
    """``counter[0] += value`` as one atomic operation; returns the value before. ``counter``: a 1-D int64 array."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, arguments):
        view = context.make_array(signature.args[0])(context, builder, arguments[0])
        amount = context.cast(builder, arguments[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", view.data, amount, "monotonic")

    return types.int64(counter, value), codegen


@intrinsic
def pointer(typingctx, address, dtype):
    """``address`` (an int64 value, or a ``void*``) as a pointer to ``dtype`` values, for ``numba.carray``."""
    if not (isinstance(address, types.Integer) or address == types.voidptr) or \
            not isinstance(dtype, (types.NumberClass, types.DType)):
        return None
    target = types.CPointer(dtype.dtype)

    def codegen(context, builder, signature, arguments):
        value_type = context.get_value_type(target)
        if address == types.voidptr:
            return builder.bitcast(arguments[0], value_type)
        return builder.inttoptr(arguments[0], value_type)

    return target(address, dtype), codegen


class Runtime:
    """A GNU OpenMP runtime loaded from ``path`` (its ``GOMP_parallel`` entry point).

    Loading a library the process has already loaded (as torch has its ``libgomp.so.1``) returns that library:
    the same thread pool. Raises ``OSError`` when ``path`` cannot be loaded, ``AttributeError`` when it has no
    ``GOMP_parallel``.
    """

    def __init__(self, path: str):
        library = ctypes.CDLL(path)
        self._parallel = library.GOMP_parallel  # void GOMP_parallel(void (*fn)(void *), void *data, unsigned, unsigned)
        self._parallel.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint)
        self._parallel.restype = None
        self.path = path
        self.pid = os.getpid()

    @property
    def usable(self) -> bool:
        """False in a process forked after loading (GNU OpenMP's threads are not the child's)."""
        return os.getpid() == self.pid

    def run(self, function: int, block, threads: int) -> None:
        """Call the ``void(void*)`` function at address ``function`` with ``block``'s address (a C-contiguous int64
        ndarray, kept alive by the caller) on ``threads`` threads of the runtime, the calling thread one of them;
        returns when every call has returned."""
        self._parallel(function, block.ctypes.data, max(1, int(threads)), 0)


@functools.lru_cache(maxsize=None)
def runtime_at(path: str) -> Runtime | None:
    """The :class:`Runtime` of the library at ``path`` (one per path), or None when it cannot be loaded or is not a
    GNU OpenMP runtime."""
    if not os.path.isfile(path):
        return None
    try:
        return Runtime(path)
    except (OSError, AttributeError):
        return None
