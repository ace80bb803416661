"""Pytest wiring of the conformance suite: which implementations run, and how each property is run on one.

Options: ``--backend NAME`` (repeatable; one of the project's backends), ``--impl package.module[:attr]``
(repeatable; a third-party implementation), ``--max-examples N`` (hypothesis examples per property; default
the active profile's). Without ``--backend`` or ``--impl`` every project backend runs; with only ``--impl``,
only those. Tests take the ``impl`` fixture (parametrized with readable ids) and the ``prove`` fixture.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

# Same default as the repository's root conftest, which an installed copy of this package does not have.
if os.environ.get("INVOLUTION_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from involution.conformance.backends import PROJECT_BACKENDS, Implementation, load  # noqa: E402

_loaded: dict[str, Implementation] = {}


def pytest_addoption(parser) -> None:
    group = parser.getgroup("involution conformance")
    group.addoption("--backend", action="append", default=[], choices=list(PROJECT_BACKENDS),
                    help="project backend to test (repeatable; default: all of them unless --impl is given)")
    group.addoption("--impl", action="append", default=[], metavar="package.module[:attr]",
                    help="third-party implementation exposing involution2d[, involution2d_backward] (repeatable)")
    group.addoption("--max-examples", type=int, default=None, metavar="N",
                    help="hypothesis examples per property and implementation (default: the active profile's)")


def selected_implementations(config) -> list[str]:
    """Names/specs of the implementations this session tests, in option order."""
    backends, impls = config.getoption("--backend"), config.getoption("--impl")
    if not backends and not impls:
        backends = list(PROJECT_BACKENDS)
    return list(dict.fromkeys(backends + impls))


def pytest_generate_tests(metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        names = selected_implementations(metafunc.config)
        metafunc.parametrize("impl", names, ids=names, indirect=True)


def loaded(name: str) -> Implementation:
    """The implementation ``name``, imported once per process."""
    if name not in _loaded:
        _loaded[name] = load(name)
    return _loaded[name]


@pytest.fixture
def impl(request) -> Implementation:
    """The implementation under test; skips with the reason when it cannot be imported."""
    implementation = loaded(request.param)
    if implementation.skip_reason:
        pytest.skip(implementation.skip_reason)
    return implementation


class Prover:
    """Runs a hypothesis property on one implementation and calls it, turning NotImplementedError into rejects."""

    def __init__(self, implementation: Implementation, max_examples: int, node):
        self.impl = implementation
        self.max_examples = max_examples
        self.node = node
        self.unsupported: list[str] = []

    def forward(self, x, kernel, stride, padding, dilation):
        """``impl.involution2d(...)``; a NotImplementedError rejects the drawn case as unsupported."""
        return self._call(self.impl.forward, x, kernel, stride, padding, dilation)

    def require_backward(self) -> None:
        """Skip the property when the implementation has no ``involution2d_backward``."""
        if self.impl.backward is None:
            pytest.skip(f"{self.impl.name} has no involution2d_backward")

    def backward(self, grad_out, x, kernel, stride, padding, dilation):
        """``impl.involution2d_backward(...)``; a NotImplementedError rejects the drawn case as unsupported."""
        return self._call(self.impl.backward, grad_out, x, kernel, stride, padding, dilation)

    def _call(self, function, *args):
        try:
            return function(*args)
        except NotImplementedError as error:
            self.unsupported.append(str(error))
            reject()

    def __call__(self, test, *, single_threaded: bool = False) -> None:
        """Run ``test(data)`` on ``max_examples`` drawn examples; skip if every drawn case was unsupported.

        The oracle's tensors are tiny, so torch runs on one thread (waking its pool costs more than the work).
        ``single_threaded`` also runs numba's parallel kernels on one thread, for properties that
        call the implementation hundreds of times per example; the others keep every thread, so races show.
        """
        config = settings(settings(), max_examples=self.max_examples, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        numba = sys.modules.get("numba") if single_threaded else None
        numba_threads = numba.get_num_threads() if numba else None
        if numba:
            numba.set_num_threads(1)
        try:
            config(given(data=st.data())(test))()
        except Unsatisfiable:
            if not self.unsupported:
                raise
            pytest.skip(f"unsupported by {self.impl.name}: {self.unsupported[-1]}")
        finally:
            torch.set_num_threads(threads)
            if numba:
                numba.set_num_threads(numba_threads)
            # The runner's report counts the drawn cases the implementation declined.
            self.node.user_properties.append(("unsupported", len(self.unsupported)))


@pytest.fixture
def prove(impl, request) -> Prover:
    """A :class:`Prover` for ``impl`` with its example count: ``--max-examples``, the profile, the impl's cap."""
    examples = request.config.getoption("--max-examples") or settings().max_examples
    if impl.limits.max_examples:
        examples = min(examples, impl.limits.max_examples)
    return Prover(impl, examples, request.node)
