"""The one backend registry: every implementation of the op the project ships, by name, with one vocabulary.

=============  ==========  ==============================================  =========================================
name           framework   module                                          what it is
=============  ==========  ==============================================  =========================================
``reference``  numpy       ``involution.reference.op``                     readable NumPy, the yardstick
``fast-cpu``   numpy       ``involution.fast.cpu``                         numba parallel CPU kernels
``fast-cuda``  numpy       ``involution.fast.cuda``                        numba.cuda kernels (host or device arrays)
``fast``       torch       ``involution.torch.ops``                        the numba kernels as a torch op (CPU/CUDA)
``taps``       torch       ``involution.torch.taps``                       plain PyTorch, one strided slice per tap
=============  ==========  ==============================================  =========================================

Each module exposes ``involution2d(x, kernel, stride=1, padding=0, dilation=1)`` and
``involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1) -> (grad_x, grad_kernel)``
(a torch backend may rely on autograd instead). Modules are imported on first use, so a machine without numba or
torch can still use the others; :func:`load` turns a missing dependency into an ``ImportError`` naming the extra
to install. The NumPy layers, the torch modules, the conformance suite, the benchmarks and the CLI all resolve
backend names here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Backend:
    """One registered implementation: its ``name``, the ``framework`` of its arrays, its ``module`` path."""

    name: str
    framework: str  # "numpy" (NumPy arrays in and out) or "torch" (torch tensors in and out)
    module: str
    extra: str  # the pip extra that provides its dependencies
    summary: str


BACKENDS = {backend.name: backend for backend in (
    Backend("reference", "numpy", "involution.reference.op", "", "readable NumPy, the yardstick"),
    Backend("fast-cpu", "numpy", "involution.fast.cpu", "fast", "numba parallel CPU kernels"),
    Backend("fast-cuda", "numpy", "involution.fast.cuda", "fast", "numba.cuda kernels"),
    Backend("fast", "torch", "involution.torch.ops", "fast,torch", "numba kernels as a torch op (CPU, CUDA)"),
    Backend("taps", "torch", "involution.torch.taps", "torch", "plain PyTorch, one strided slice per tap"),
)}
FRAMEWORKS = ("numpy", "torch")


def names(framework: str | None = None) -> tuple[str, ...]:
    """Registered backend names, optionally only those of ``framework`` ("numpy" or "torch")."""
    if framework is not None:
        check_framework(framework)
    return tuple(name for name, backend in BACKENDS.items() if framework in (None, backend.framework))


def get(name: str, framework: str | None = None) -> Backend:
    """The registered backend ``name``; a ``ValueError`` listing the valid names (of ``framework``) otherwise."""
    valid = names(framework)
    if not isinstance(name, str) or name not in valid:
        kind = f"a {framework} backend" if framework else "a backend"
        raise ValueError(f"backend must be {kind}, one of {valid}, got {name!r}")
    return BACKENDS[name]


def load(name: str, framework: str | None = None) -> ModuleType:
    """Import and return the module of backend ``name`` (checked with :func:`get`).

    Raises
    ------
    ValueError
        ``name`` is not a registered backend (of ``framework``).
    ImportError
        Its dependencies are missing; the message names the pip extra that installs them.
    """
    backend = get(name, framework)
    try:
        return importlib.import_module(backend.module)
    except ImportError as error:
        missing_package = isinstance(error, ModuleNotFoundError) and not (error.name or "").startswith("involution")
        hint = f" (pip install 'involution[{backend.extra}]')" if backend.extra and missing_package else ""
        raise ImportError(f"backend {name!r} needs {backend.module}, which failed to import{hint}: {error}") from error


def functions(name: str, framework: str | None = None):
    """``(involution2d, involution2d_backward)`` of backend ``name``; the backward is ``None`` if it has none."""
    module = load(name, framework)
    return module.involution2d, getattr(module, "involution2d_backward", None)


def default(framework: str) -> str:
    """The fastest backend of ``framework`` that imports here: the numba one, else the plain one."""
    fast, plain = {"numpy": ("fast-cpu", "reference"), "torch": ("fast", "taps")}[check_framework(framework)]
    try:
        load(fast)
        return fast
    except ImportError:
        return plain


def check_framework(framework: str) -> str:
    """``framework`` checked against :data:`FRAMEWORKS`."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return framework
