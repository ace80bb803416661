"""The implementations the suite judges: the project's backends by name, or any ``package.module[:attr]``.

An implementation exposes ``involution2d(x, kernel, stride, padding, dilation)`` and optionally
``involution2d_backward(grad_out, x, kernel, stride, padding, dilation) -> (grad_x, grad_kernel)``: NumPy
arrays in and out (``--framework numpy``) or torch tensors (``--framework torch``, through the suite's adapter
:mod:`~involution.conformance.adapters.torch_framework`). It may declare ``CONFORMANCE_LIMITS``, a dict of
:class:`~involution.conformance.limits.Limits` fields restricting what the suite draws for it; limits that
exclude a core case make its verdict "conformant only within declared limits". It raises
``NotImplementedError`` for a valid case it cannot compute ("unsupported"). One that cannot be imported is
reported as unavailable, with the reason.

Implementations given as ``module[:attr]`` always run in a worker process (:mod:`~involution.conformance.worker`);
the project's backends run in the test process unless ``isolate`` is asked for (the CLI always asks).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from involution import backends
from involution.conformance.limits import Limits, check_declared, limits_from

# framework -> name -> module: the project's backends (from the one registry, same names), plus the suite's own
# oracle, which judges itself as a check that every property can be met.
PROJECT_BACKENDS = {
    "numpy": {**{name: backends.get(name).module for name in backends.names("numpy")},
              "oracle": "involution.conformance.adapters.torch_oracle"},
    "torch": {**{name: backends.get(name).module for name in backends.names("torch")},
              "oracle": "involution.conformance.oracle"},
}

# The CUDA simulator interprets every thread in Python: tiny shapes and few examples keep CI in budget. These cap
# the random draws only (when involution.fast.cuda says it runs on the simulator: NUMBA_ENABLE_CUDASIM=1, which
# the repository's root conftest sets for the tests; this module changes no environment variable); they are the
# suite's, not declared by the backend, so the core cases still run in full.
CUDA_SIMULATOR_LIMITS = dict(max_work=600, max_fd_elements=12, max_extent=3, max_groups=2, max_group_channels=2,
                             max_batch=2, max_kernel=3, max_examples=6)


class InputModified(AssertionError):
    """An implementation changed an input array it was given (the definition's op leaves its inputs alone).

    An ``AssertionError``, so it fails the property; every place that takes an exception as an answer (a decline,
    a rejected capability, an ill-posed input raised) re-raises it first."""


ARGUMENT_NAMES = {"forward": ("x", "kernel"), "backward": ("grad_out", "x", "kernel")}


class Unmodified:
    """``function`` (an implementation's forward or backward) with "inputs unmodified" checked on every call.

    The suite's one call path: :class:`Implementation` wraps its ``forward`` and ``backward`` in this, so every
    property, the core cases, the capabilities and the ill-posed calls all go through it, in-process or through a
    worker (whose changes to the inputs are written back into the caller's arrays). Copies of the array arguments
    are taken before the call; after it, returned or raised, an argument whose bytes differ raises
    :class:`InputModified` naming it, and is restored from its copy, so no expected value is ever computed from a
    changed input.
    """

    def __init__(self, function: Callable, kind: str):
        self.function, self.kind = function, kind

    def __call__(self, *args, **kwargs):
        names = ARGUMENT_NAMES[self.kind]
        before = [(index, np.array(arg, copy=True)) for index, arg in enumerate(args)
                  if isinstance(arg, np.ndarray)]
        try:
            return self.function(*args, **kwargs)
        finally:
            changed = []
            for index, copy in before:
                now = args[index]
                if now.tobytes() != copy.tobytes():
                    label = names[index] if index < len(names) else f"argument {index}"
                    changed.append(f"{label} ({int(np.sum(~_same(now, copy)))} of {copy.size} elements changed)")
                    if now.flags.writeable:
                        np.copyto(now, copy)
            if changed:
                raise InputModified(f"{self.kind} modified its inputs: {', '.join(changed)}; the op must leave "
                                    f"its inputs unmodified (expected values use copies taken before the call)")


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: the same bytes (NaN equals NaN of the same payload; 0.0 differs from -0.0)."""
    if not a.size:
        return np.ones(a.shape, bool)
    a_bytes, b_bytes = (np.ascontiguousarray(v).view(np.uint8).reshape(a.size, -1) for v in (a, b))
    return (a_bytes == b_bytes).all(axis=1).reshape(a.shape)


@dataclass
class Implementation:
    """One implementation under test, NumPy in and out whatever its framework.

    ``declared`` holds its ``CONFORMANCE_LIMITS``; ``limits`` is what the random draws respect (the declared
    limits plus the suite's cost caps). ``skip_reason`` is set when it could not be loaded.
    """

    name: str
    framework: str = "numpy"
    forward: Callable | None = None
    backward: Callable | None = None
    declared: dict = field(default_factory=dict)
    skip_reason: str | None = None
    gradients: str | None = None  # where the backward comes from: its own function, or autograd (torch)
    isolated: bool = False
    close: Callable = lambda: None

    def __post_init__(self):
        """Every call of the implementation goes through :class:`Unmodified` (inputs unmodified, checked)."""
        if self.forward is not None and not isinstance(self.forward, Unmodified):
            self.forward = Unmodified(self.forward, "forward")
        if self.backward is not None and not isinstance(self.backward, Unmodified):
            self.backward = Unmodified(self.backward, "backward")

    @property
    def limits(self) -> Limits:
        simulated = self.name == "fast-cuda" and _cuda_simulated()
        return limits_from(self.declared, CUDA_SIMULATOR_LIMITS if simulated else {})

    @property
    def project(self) -> bool:
        """Whether this is one of the project's own backends (its strict tier is required)."""
        return self.name in PROJECT_BACKENDS[self.framework]

    def describe(self) -> dict:
        """A JSON-ready summary: name, framework, whether it loaded (and why not), backward, declared limits."""
        return {"name": self.name, "framework": self.framework, "available": self.skip_reason is None,
                "skip_reason": self.skip_reason, "has_backward": self.backward is not None,
                "gradients": self.gradients,
                "declared_limits": self.declared, "isolated": self.isolated}


def _cuda_simulated() -> bool:
    """Whether the CUDA backend runs on numba's simulator (asked of ``involution.fast.cuda``; False if it cannot
    load, in which case fast-cuda is reported unavailable anyway)."""
    try:
        from involution.fast import cuda
    except ImportError:
        return False
    return cuda.is_simulator()


def checked_description(description, spec: str) -> dict:
    """A worker's description of its implementation (see :meth:`Implementation.describe`), every field checked to
    be of its type (the worker is the implementation's process: its messages are data to check, not to trust).

    Raises ``TypeError`` or ``ValueError`` naming the field that is not.
    """
    if type(description) is not dict:
        raise TypeError(f"description must be a dict, got {type(description).__name__}")
    expected = {"name": (str,), "framework": (str,), "available": (bool,), "skip_reason": (str, type(None)),
                "has_backward": (bool,), "gradients": (str, type(None)), "isolated": (bool,)}
    for key, types in expected.items():
        if type(description.get(key)) not in types:
            raise TypeError(f"description field {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                            f"got {type(description.get(key)).__name__}")
    if description["available"] == (description["skip_reason"] is not None):
        raise ValueError("description fields 'available' and 'skip_reason' disagree")
    return {**{key: description[key] for key in expected}, "name": spec,
            "declared_limits": check_declared(description.get("declared_limits", {}))}


def _target(spec: str, framework: str):
    module_name, _, attr = PROJECT_BACKENDS[framework].get(spec, spec).partition(":")
    target = importlib.import_module(module_name)
    return getattr(target, attr) if attr else target


def load_here(spec: str, framework: str = "numpy", device: str = "cpu") -> Implementation:
    """Import ``spec`` (a project backend of ``framework`` or ``package.module[:attr]``) into this process.

    Never raises for a missing or broken module: the returned implementation carries ``skip_reason``.
    """
    try:
        target = _target(spec, framework)
        forward, backward = getattr(target, "involution2d"), getattr(target, "involution2d_backward", None)
        declared = check_declared(getattr(target, "CONFORMANCE_LIMITS", {}))  # plain JSON data, known fields
    except Exception as error:  # any import-time failure becomes "unavailable" with its reason
        return Implementation(spec, framework, skip_reason=f"{spec} unavailable: {type(error).__name__}: {error}")
    gradients = None if backward is None else "involution2d_backward"
    if framework == "torch":
        from involution.conformance.adapters.torch_framework import wrap

        gradients = gradients or "autograd through involution2d"
        forward, backward = wrap(forward, backward, device)
    return Implementation(spec, framework, forward, backward, declared, gradients=gradients)


class _Remote:
    """``worker.call(function, ...)`` as a plain callable."""

    def __init__(self, worker, function: str):
        self.worker, self.function = worker, function

    def __call__(self, *args, **kwargs):
        return self.worker.call(self.function, args, kwargs)


def load(spec: str, framework: str = "numpy", device: str = "cpu", *, isolate: bool = False, timeout: float,
         **containment) -> Implementation:
    """The implementation ``spec``; in a worker process if ``isolate`` or if it is not a project backend.

    ``timeout`` is the worker's limit in seconds per call; ``containment`` its ``import_timeout`` (seconds) and
    ``memory_limit_gib`` (see :class:`~involution.conformance.worker.Worker`).
    """
    if not isolate and spec in PROJECT_BACKENDS[framework]:
        return load_here(spec, framework, device)
    from involution.conformance.worker import Worker

    worker = Worker(spec, framework, device, timeout, **containment)
    description = worker.start()
    if description["skip_reason"]:
        worker.close()
        return Implementation(spec, framework, skip_reason=description["skip_reason"], isolated=True)
    backward = _Remote(worker, "backward") if description["has_backward"] else None
    return Implementation(spec, framework, _Remote(worker, "forward"), backward, description["declared_limits"],
                          gradients=description["gradients"], isolated=True, close=worker.close)


_cache: dict[tuple, Implementation] = {}


def cached_load(spec: str, framework: str = "numpy", device: str = "cpu", *, isolate: bool = False,
                timeout: float, **containment) -> Implementation:
    """:func:`load`, once per process and set of options: the runner's check that an implementation loads and
    the pytest session that judges it share one worker process. :func:`close_all` stops them."""
    key = (spec, framework, device, isolate, timeout, tuple(sorted(containment.items())))
    if key not in _cache:
        _cache[key] = load(spec, framework, device, isolate=isolate, timeout=timeout, **containment)
    return _cache[key]


def close_all() -> None:
    """Stop every worker process :func:`cached_load` started."""
    while _cache:
        _cache.popitem()[1].close()
