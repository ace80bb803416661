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

GNU OpenMP's pool does not survive ``fork()`` (torch's own operators wait forever in a child that asks for more
than one thread): :attr:`Runtime.usable` is False in a child forked after this module was imported, where callers
run numba's own threads (TBB is fork-safe) instead; and callers ask torch's runtime for at most torch's thread count
(``torch.get_num_threads()``, which DataLoader workers set to 1), so that a child forked before the import is no
worse off than with torch's own operators.
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
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


_FORKED = False  # this process is a fork() child of one that had imported this module


def _mark_forked() -> None:
    global _FORKED
    _FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked)


class Runtime:
    """A GNU OpenMP runtime: the library ``name`` (a path, or a soname such as ``"libgomp.so.1"``), its
    ``GOMP_parallel`` entry point.

    With ``loaded_only`` the library must already be in the process (``RTLD_NOLOAD``): for ``"libgomp.so.1"`` that
    is the copy torch's libraries were bound to, whichever file it came from. Raises ``OSError`` when the library
    cannot be loaded (or is not loaded), ``AttributeError`` when it has no ``GOMP_parallel``.
    """

    def __init__(self, name: str, loaded_only: bool = False):
        mode = ctypes.DEFAULT_MODE | (getattr(os, "RTLD_NOLOAD", 0) if loaded_only else 0)
        library = ctypes.CDLL(name, mode=mode)
        self._parallel = library.GOMP_parallel  # void GOMP_parallel(void (*fn)(void *), void *data, unsigned, unsigned)
        self._parallel.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint)
        self._parallel.restype = None
        self.name = name
        self.pid = os.getpid()

    @property
    def usable(self) -> bool:
        """False in a process forked after this module was imported, or after this runtime was loaded: GNU
        OpenMP's threads are the parent's, and a region waits for them forever."""
        return not _FORKED and os.getpid() == self.pid

    def run(self, function: int, block: np.ndarray, threads: int) -> None:
        """Call the ``void(void*)`` function at address ``function`` with ``block``'s address (a C-contiguous int64
        ndarray, kept alive by the caller) on ``threads`` threads of the runtime, the calling thread one of them;
        returns when every call has returned. Raises ``ValueError`` for another ``block``, ``RuntimeError`` when
        the runtime is not :attr:`usable`."""
        if type(block) is not np.ndarray or block.dtype != np.int64 or not block.flags.c_contiguous:
            raise ValueError(f"block must be a C-contiguous int64 ndarray, got {type(block).__name__} "
                             f"{getattr(block, 'dtype', '')}")
        if not self.usable:
            raise RuntimeError(f"the OpenMP runtime {self.name} was loaded by another process (this one is a fork)")
        self._parallel(function, block.ctypes.data, max(1, int(threads)), 0)


@functools.lru_cache(maxsize=None)
def runtime_at(name: str, loaded_only: bool = False) -> Runtime | None:
    """The :class:`Runtime` of library ``name`` (one per name; see :class:`Runtime`), or None when it cannot be
    loaded (with ``loaded_only``: is not loaded) or is not a GNU OpenMP runtime."""
    try:
        return Runtime(name, loaded_only)
    except (OSError, AttributeError):
        return None
