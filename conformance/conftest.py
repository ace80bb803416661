"""Pytest wiring of the conformance suite: which implementations run, and how each property is run on one.

Options: ``--framework numpy|torch`` (what the implementations take and return; default numpy), ``--device``
(torch device, default cpu), ``--backend NAME`` (repeatable; one of the project's backends of the framework),
``--impl package.module[:attr]`` (repeatable; a third-party implementation, always run in a worker process),
``--isolate`` (run the project's backends in worker processes too), ``--timeout S`` (seconds per call in a
worker), ``--import-timeout S`` and ``--memory-limit GIB`` (the worker's import time and address space),
``--max-examples N`` (hypothesis examples per property; default the active profile's), ``--no-shrink``
(report a failing example as first drawn, not shrunk to a minimal one). Without
``--backend`` or ``--impl`` every project backend of the framework runs; with only ``--impl``, only those.
Tests take the ``impl`` fixture (parametrized with readable ids) and the ``prove`` fixture.
"""
from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from hypothesis.database import ExampleDatabase
from hypothesis.errors import Unsatisfiable

from involution.conformance.backends import PROJECT_BACKENDS, Implementation, InputModified, cached_load, close_all
from involution.conformance.runner import DEFAULT_TIMEOUT, positive_int, positive_seconds
from involution.conformance.worker import DEFAULT_IMPORT_TIMEOUT, DEFAULT_MEMORY_LIMIT_GIB


def pytest_addoption(parser) -> None:
    group = parser.getgroup("involution conformance")
    group.addoption("--framework", choices=list(PROJECT_BACKENDS), default="numpy",
                    help="what the implementations take and return: numpy arrays or torch tensors (default numpy)")
    group.addoption("--device", default="cpu", help="torch device for --framework torch (default cpu)")
    group.addoption("--backend", action="append", default=[],
                    choices=sorted({name for names in PROJECT_BACKENDS.values() for name in names}),
                    help="project backend to test (repeatable; default: all of the framework's unless --impl)")
    group.addoption("--impl", action="append", default=[], metavar="package.module[:attr]",
                    help="third-party implementation exposing involution2d[, involution2d_backward] (repeatable)")
    group.addoption("--isolate", action="store_true",
                    help="run the project's backends in worker processes too (--impl always runs in one)")
    group.addoption("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                    help=f"seconds one call may take in a worker process (default {DEFAULT_TIMEOUT:g})")
    group.addoption("--import-timeout", type=positive_seconds, default=DEFAULT_IMPORT_TIMEOUT, metavar="S",
                    help=f"seconds a worker may take to import the implementation (default {DEFAULT_IMPORT_TIMEOUT:g})")
    group.addoption("--memory-limit", type=positive_seconds, default=DEFAULT_MEMORY_LIMIT_GIB, metavar="GIB",
                    help=f"address space of a worker process, GiB (default {DEFAULT_MEMORY_LIMIT_GIB:g})")
    group.addoption("--max-examples", type=positive_int, default=None, metavar="N",
                    help="hypothesis examples per property and implementation (default: the active profile's)")
    group.addoption("--no-shrink", action="store_true",
                    help="report a failing example as first drawn instead of shrinking it (faster verdicts)")


def selected_implementations(config) -> list[str]:
    """Names/specs of the implementations this session tests, in option order."""
    backends, impls = config.getoption("--backend"), config.getoption("--impl")
    if not backends and not impls:
        backends = list(PROJECT_BACKENDS[config.getoption("--framework")])
    return list(dict.fromkeys(backends + impls))


def pytest_configure(config) -> None:
    framework = config.getoption("--framework")
    wrong = [name for name in config.getoption("--backend") if name not in PROJECT_BACKENDS[framework]]
    if wrong:
        raise pytest.UsageError(f"--backend {', '.join(wrong)} is not a {framework} backend; "
                                f"{framework} backends: {', '.join(PROJECT_BACKENDS[framework])}")


def pytest_generate_tests(metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        names = selected_implementations(metafunc.config)
        metafunc.parametrize("impl", names, ids=names, indirect=True)


def pytest_unconfigure(config) -> None:
    """Stop every worker process this session started."""
    close_all()


@pytest.fixture
def impl(request) -> Implementation:
    """The implementation under test; skips with the reason when it cannot be imported."""
    option = request.config.getoption
    implementation = cached_load(request.param, option("--framework"), option("--device"),
                                 isolate=option("--isolate"), timeout=option("--timeout"),
                                 import_timeout=option("--import-timeout"), memory_limit_gib=option("--memory-limit"))
    if implementation.skip_reason:
        pytest.skip(implementation.skip_reason)
    return implementation


class KeyedDatabase(ExampleDatabase):
    """``database`` with every key prefixed by ``prefix``: one implementation's saved failing examples kept apart
    from another's.

    Hypothesis keys a test's saved examples by the test function, and a property's function (the closure
    :class:`Prover` runs) is the same for every implementation. A failing example it finds saved is replayed
    first and, when it still fails, reported without shrinking (Hypothesis' fast path: a saved example is taken
    as shrunk already), so one port's failing input, or one drawn under ``--no-shrink``, would be shown as
    another run's shrunk case. Hypothesis' pytest plugin keys parametrized tests by node id the same way; the
    closures here are not pytest items, so the prefix is the node id and the framework.
    """

    def __init__(self, database: ExampleDatabase, prefix: str):
        super().__init__()
        self.database, self.prefix = database, prefix.encode()

    def save(self, key: bytes, value: bytes) -> None:
        self.database.save(self.prefix + key, value)

    def fetch(self, key: bytes):
        return self.database.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.database.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.database.move(self.prefix + src, self.prefix + dest, value)


class Prover:
    """Runs a hypothesis property on one implementation and calls it; declined draws are rejected and counted.

    A draw is declined when the implementation raises one of ``declines`` (``NotImplementedError``: a valid case
    it cannot compute; capabilities pass ``Exception``: the input kind is rejected).
    """

    def __init__(self, implementation: Implementation, max_examples: int, node, shrink: bool = True):
        self.impl = implementation
        self.max_examples = max_examples
        self.node = node
        self.shrink = shrink
        self.declined: list[str] = []
        self.answered = 0
        self.declines: tuple[type, ...] = (NotImplementedError,)
        self.declined_label = "unsupported"

    def forward(self, x, kernel, stride, padding, dilation, **options):
        """``impl.involution2d(...)``; a declining exception rejects the drawn case."""
        return self._call(self.impl.forward, (x, kernel, stride, padding, dilation), options)

    def require_backward(self) -> None:
        """Skip the property when the implementation has no ``involution2d_backward``."""
        if self.impl.backward is None:
            pytest.skip(f"{self.impl.name} has no involution2d_backward")

    def backward(self, grad_out, x, kernel, stride, padding, dilation, **options):
        """``impl.involution2d_backward(...)``; a declining exception rejects the drawn case."""
        return self._call(self.impl.backward, (grad_out, x, kernel, stride, padding, dilation), options)

    def _call(self, function, args, options):
        try:
            result = function(*args, **options)
        except InputModified:  # never a decline: a changed input fails the property (see backends.Unmodified)
            raise
        except self.declines as error:
            self.declined.append(f"{type(error).__name__}: {str(error)[:120]}")
            if not self.answered and len(self.declined) >= self.max_examples:
                # As many draws as examples asked for, every one declined: more would only cost time (hypothesis
                # itself gives up after ten times as many). pytest's skip stops hypothesis at once.
                self._skip_declined()
            reject()
        self.answered += 1
        return result

    def _skip_declined(self):
        pytest.skip(f"{self.declined_label} by {self.impl.name}: {self.declined[-1]}")

    def __call__(self, test, *, single_threaded: bool = False, declines=(NotImplementedError,),
                 declined_label: str = "unsupported", shrink: bool = True) -> None:
        """Run ``test(data)`` on ``max_examples`` drawn examples; skip with ``declined_label`` if every draw was
        declined.

        The oracle's tensors are tiny, so torch runs on one thread (waking its pool costs more than the work).
        ``single_threaded`` also runs numba's parallel kernels on one thread, for properties that
        call the implementation hundreds of times per example; the others keep every thread, so races show.
        ``shrink=False`` reports the first failing example as drawn (for draws that are small already and whose
        every shrinking step can cost a compilation in the implementation); ``--no-shrink`` does it everywhere. Such
        a run neither replays nor saves examples of Hypothesis' database; a shrinking run keeps its examples apart
        per implementation (:class:`KeyedDatabase`).
        When the first ``max_examples`` draws are all declined and none was answered, the property stops there.
        """
        self.declines, self.declined_label = declines, declined_label
        shrink = shrink and self.shrink
        # No explain phase: with it, hypothesis runs every example after the first failure (shrinking included)
        # under sys.settrace for a report of the lines only failing examples ran, which the matrix never shows
        # and which cannot see into a worker process; it made failing runs 2-3x a conformant one
        # (docs/conformance.md, "How long a run takes").
        phases = [phase for phase in settings().phases
                  if phase != Phase.explain and (shrink or phase != Phase.shrink)]
        # Failing examples saved per implementation, and none unshrunk (see KeyedDatabase).
        database = settings().database
        if database is not None:
            database = KeyedDatabase(database, f"{self.node.nodeid} {self.impl.framework}") if shrink else None
        config = settings(settings(), max_examples=self.max_examples, deadline=None, phases=phases,
                          database=database,
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
            if self.declined:
                self._skip_declined()
            if self.impl.declared:  # nothing drawn fits the declared limits (else the strategies are at fault)
                pytest.skip(f"limited: no drawn case fits the declared limits {self.impl.declared}")
            raise
        finally:
            torch.set_num_threads(threads)
            if numba:
                numba.set_num_threads(numba_threads)
            # The runner's report counts the drawn cases the implementation declined and answered, and why.
            self.node.user_properties += [("declined", len(self.declined)), ("answered", self.answered),
                                          ("declined_reasons", dict(Counter(self.declined).most_common(5)))]


@pytest.fixture
def prove(impl, request) -> Prover:
    """A :class:`Prover` for ``impl`` with its example count: ``--max-examples``, the profile, the impl's cap."""
    examples = request.config.getoption("--max-examples") or settings().max_examples
    if impl.limits.max_examples:
        examples = min(examples, impl.limits.max_examples)
    return Prover(impl, examples, request.node, shrink=not request.config.getoption("--no-shrink"))
