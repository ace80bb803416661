"""The implementations the suite judges: the project's backends by name, or any ``package.module[:attr]``.

An implementation exposes ``involution2d(x, kernel, stride, padding, dilation)`` and optionally
``involution2d_backward(grad_out, x, kernel, stride, padding, dilation) -> (grad_x, grad_kernel)``, NumPy
arrays in and out, and optionally ``CONFORMANCE_LIMITS``, a dict of :class:`~involution.conformance.strategies.Limits`
fields restricting what the suite draws for it. It raises ``NotImplementedError`` for a valid case it
cannot compute (reported as "unsupported"). One that cannot be imported is reported as skipped, with the reason.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from involution import backends
from involution.conformance.strategies import Limits

# name -> module: the project's NumPy backends (from the one registry, same names), plus the suite's own oracle
# behind a NumPy adapter, which judges itself as a check that every property can be met. All run by default.
PROJECT_BACKENDS = {
    **{name: backends.get(name).module for name in backends.names("numpy")},
    "torch": "involution.conformance.adapters.torch_oracle",
}

# The CUDA simulator interprets every thread in Python: tiny shapes and few examples keep CI in budget.
CUDA_SIMULATOR_LIMITS = dict(max_work=600, max_fd_elements=40, max_extent=3, max_groups=2, max_group_channels=2,
                             max_batch=2, max_kernel=3, max_examples=6)


@dataclass
class Implementation:
    """One implementation under test; ``skip_reason`` is set when it could not be loaded."""

    name: str
    forward: Callable | None = None
    backward: Callable | None = None
    limits: Limits = field(default_factory=Limits)
    skip_reason: str | None = None

    def describe(self) -> dict:
        """A JSON-ready summary: name, whether it loaded (and why not), backward present, limits."""
        return {"name": self.name, "available": self.skip_reason is None, "skip_reason": self.skip_reason,
                "has_backward": self.backward is not None, "limits": asdict(self.limits)}


def _limits_for(name: str, target) -> Limits:
    declared = dict(getattr(target, "CONFORMANCE_LIMITS", {}) or {})
    if name == "fast-cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        declared = {**CUDA_SIMULATOR_LIMITS, **declared}
    return Limits(**declared)


def load(spec: str) -> Implementation:
    """Load a project backend by name (see :data:`PROJECT_BACKENDS`) or ``package.module[:attr]``.

    Never raises for a missing or broken module: the returned implementation carries ``skip_reason``.
    """
    module_name, _, attr = PROJECT_BACKENDS.get(spec, spec).partition(":")
    try:
        target = importlib.import_module(module_name)
        if attr:
            target = getattr(target, attr)
        forward = getattr(target, "involution2d")
        return Implementation(spec, forward, getattr(target, "involution2d_backward", None), _limits_for(spec, target))
    except Exception as error:  # any import-time failure becomes a skip with its reason
        return Implementation(spec, skip_reason=f"{spec} unavailable: {type(error).__name__}: {error}")
