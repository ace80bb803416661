"""Run the op-level conformance suite in-process and collect a property x implementation matrix.

``run_suite`` calls ``pytest.main`` on this package's ``test_op_*.py`` files with a plugin that records
each test's outcome; the CLI (``python -m involution conformance``) and the meta-tests use it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

PROPERTY_FILES = sorted(str(path) for path in Path(__file__).parent.glob("test_op_*.py"))
# Cell of the matrix for a property and an implementation, from its tests' outcomes.
PASS, FAIL, SKIP, UNSUPPORTED = "pass", "FAIL", "skip", "unsupported"


@dataclass
class Outcome:
    """One test's result: its property (function name without ``test_``) on one implementation."""

    nodeid: str
    property: str
    implementation: str
    outcome: str  # passed | failed | skipped
    detail: str = ""
    unsupported: int = 0


class Collector:
    """Pytest plugin recording an :class:`Outcome` per test (a failing setup or teardown counts as failed)."""

    def __init__(self):
        self.outcomes: dict[str, Outcome] = {}
        self.labels: dict[str, tuple[str, str]] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            params = getattr(item, "callspec", None)
            implementation = params.params.get("impl", "-") if params else "-"
            self.labels[item.nodeid] = (item.originalname.removeprefix("test_"), implementation)

    def pytest_runtest_logreport(self, report) -> None:
        if report.nodeid not in self.labels:
            return
        if report.when != "call" and report.passed:
            return
        if report.nodeid in self.outcomes and self.outcomes[report.nodeid].outcome == "failed":
            return
        prop, implementation = self.labels[report.nodeid]
        detail = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = report.longrepr[2].removeprefix("Skipped: ")
        elif report.failed:
            detail = report.longreprtext.strip().splitlines()[-1] if report.longreprtext else ""
        unsupported = sum(value for key, value in report.user_properties if key == "unsupported")
        self.outcomes[report.nodeid] = Outcome(report.nodeid, prop, implementation, report.outcome, detail, unsupported)


def cell(outcomes: list[Outcome]) -> str:
    """The matrix entry for one property on one implementation."""
    if any(o.outcome == "failed" for o in outcomes):
        return FAIL
    if any(o.outcome == "passed" for o in outcomes):
        return PASS
    if outcomes and all(o.detail.startswith("unsupported") for o in outcomes):
        return UNSUPPORTED
    return SKIP


@dataclass
class SuiteResult:
    """Everything one run found; ``to_json`` is the report format documented in docs/conformance.md."""

    implementations: dict
    properties: list[str]
    matrix: dict[str, dict[str, str]]
    outcomes: list[Outcome]
    pytest_exit_code: int
    max_examples: int | None
    duration_s: float
    pytest_args: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when a property failed on some implementation or pytest itself could not run."""
        return any(FAIL in row.values() for row in self.matrix.values()) or self.pytest_exit_code not in (0, 1, 5)

    def to_json(self) -> dict:
        return {"implementations": self.implementations, "properties": self.properties, "matrix": self.matrix,
                "results": [asdict(o) for o in self.outcomes], "failed": self.failed,
                "pytest_exit_code": self.pytest_exit_code, "max_examples": self.max_examples,
                "duration_s": round(self.duration_s, 2), "pytest_args": self.pytest_args}

    def format_matrix(self) -> str:
        """A text table: one row per property, one column per implementation."""
        columns = list(self.implementations)
        width = max([len("property")] + [len(p) for p in self.properties])
        widths = [max(len(c), len(UNSUPPORTED)) for c in columns]
        lines = ["  ".join(["property".ljust(width)] + [c.ljust(w) for c, w in zip(columns, widths)]).rstrip()]
        for prop in self.properties:
            row = self.matrix[prop]
            cells = [row.get(c, "-").ljust(w) for c, w in zip(columns, widths)]
            lines.append("  ".join([prop.ljust(width)] + cells).rstrip())
        return "\n".join(lines)


def run_suite(backends=(), impls=(), max_examples=None, properties=None, extra_args=()) -> SuiteResult:
    """Run the op-level properties on the chosen implementations and return the collected :class:`SuiteResult`.

    ``backends``: project backend names (default: all, unless ``impls`` is given); ``impls``:
    ``package.module[:attr]`` specs; ``properties``: property names to run (default: all).
    """
    from involution.conformance.backends import PROJECT_BACKENDS, load

    names = list(dict.fromkeys(list(backends) + list(impls))) or list(PROJECT_BACKENDS)
    # Hypothesis is imported before pytest starts here, so pytest cannot rewrite its asserts: expected.
    args = [*PROPERTY_FILES, "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
            *extra_args]
    for name in backends:
        args += ["--backend", name]
    for spec in impls:
        args += ["--impl", spec]
    if max_examples is not None:
        args += ["--max-examples", str(max_examples)]
    if properties:
        args += ["-k", " or ".join(f"test_{p}" for p in properties)]
    collector = Collector()
    started = time.perf_counter()
    exit_code = int(pytest.main(args, plugins=[collector]))
    duration = time.perf_counter() - started

    outcomes = list(collector.outcomes.values())
    ordered = list(dict.fromkeys(o.property for o in outcomes))
    matrix = {p: {n: cell([o for o in outcomes if o.property == p and o.implementation == n]) for n in names}
              for p in ordered}
    implementations = {name: load(name).describe() for name in names}
    return SuiteResult(implementations, ordered, matrix, outcomes, exit_code, max_examples, duration, args)


def write_report(result: SuiteResult, path) -> None:
    """Write ``result`` as JSON to ``path``."""
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
