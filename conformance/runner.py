"""Run the op-level conformance suite and collect a property x implementation matrix with verdicts.

``run_suite`` loads the implementations (third-party ones in worker processes), calls ``pytest.main`` on this
package's ``test_op_*.py`` files with a plugin that records each test's outcome, and judges each implementation
(:mod:`~involution.conformance.verdict`). The CLI (``python -m involution conformance``) and the meta-tests use
it. Hand-written rather than pytest-json-report: the suite needs one cell per property and implementation and a
verdict, not pytest's generic per-test record, so a 30-line collector is less than post-processing that report.
"""
from __future__ import annotations

import argparse
import json
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from involution.arguments import write_atomically
from involution.conformance import diagnosis
from involution.conformance import verdict as verdicts
from involution.conformance.backends import PROJECT_BACKENDS, cached_load
from involution.conformance.core import CORE, excluded_core_cases
from involution.conformance.limits import narrowed_by
from involution.conformance.worker import DEFAULT_IMPORT_TIMEOUT, DEFAULT_MEMORY_LIMIT_GIB

PROPERTY_FILES = sorted(str(path) for path in Path(__file__).parent.glob("test_op_*.py"))
WIDTH = 100  # the matrix fits a terminal this wide
LABEL_WIDTH = 15  # longest column label: three columns of it beside the longest property name fit WIDTH
DEFAULT_TIMEOUT = 60.0  # seconds one call may take in a worker process (first calls compile numba kernels)


def positive_int(text: str) -> int:
    """An argparse type (CLI and pytest options): an integer >= 1 (0 examples would be no evidence, not a pass)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type (CLI and pytest options): a finite number of seconds > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


@dataclass
class Outcome:
    """One test's result: its property (function name without ``test_``) on one implementation."""

    nodeid: str
    property: str
    implementation: str
    outcome: str  # passed | failed | skipped
    detail: str = ""
    declined: int = 0
    answered: int = 0
    declined_reasons: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # one {"message", "diagnosis"} per distinct failure


class Collector:
    """Pytest plugin: keeps only the chosen properties and records an :class:`Outcome` per test (a failing setup
    or teardown counts as failed)."""

    def __init__(self, properties=None):
        self.properties = set(properties) if properties else None
        self.outcomes: dict[str, Outcome] = {}
        self.labels: dict[str, tuple[str, str]] = {}
        self.failures: dict[str, list[dict]] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        """Keep each distinct failure of a test (the exception itself, which the report no longer holds)."""
        yield
        if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
            self.failures.setdefault(item.nodeid, diagnosis.failure_entries(call.excinfo.value))

    def pytest_collection_modifyitems(self, config, items) -> None:
        kept = []
        for item in items:
            prop = item.originalname.removeprefix("test_")
            if self.properties is None or prop in self.properties:
                params = getattr(item, "callspec", None)
                self.labels[item.nodeid] = (prop, params.params.get("impl", "-") if params else "-")
                kept.append(item)
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept

    def pytest_runtest_logreport(self, report) -> None:
        if report.nodeid not in self.labels or (report.when != "call" and report.passed):
            return
        if report.nodeid in self.outcomes and self.outcomes[report.nodeid].outcome == "failed":
            return
        prop, implementation = self.labels[report.nodeid]
        detail = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = report.longrepr[2].removeprefix("Skipped: ")
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            detail = crash.message if crash else report.longreprtext.strip().splitlines()[-1]
            detail = detail.partition("\nFailing test case")[0]  # hypothesis' notes repeat the drawn case
            detail = detail.partition("\nassert ")[0]  # pytest's introspection of the assert repeats the message
        counts = {key: sum(value for name, value in report.user_properties if name == key)
                  for key in ("declined", "answered")}
        reasons = Counter()
        for name, value in report.user_properties:
            if name == "declined_reasons":
                reasons.update(value)
        failures = self.failures.get(report.nodeid, []) if report.failed else []
        if failures:
            detail = failures[0]["message"] + (f" (and {len(failures) - 1} more distinct failures)"
                                                if len(failures) > 1 else "")
        self.outcomes[report.nodeid] = Outcome(report.nodeid, prop, implementation, report.outcome, detail,
                                               counts["declined"], counts["answered"], dict(reasons), failures)


def column_labels(names: list[str]) -> dict[str, str]:
    """A matrix column label per implementation: its name, or the part after the last ``:`` or ``.`` if that is
    short and unique, else ``#k``; at most :data:`LABEL_WIDTH` characters, so that the matrix fits :data:`WIDTH`."""
    tails = [name.replace(":", ".").rpartition(".")[2] for name in names]
    labels = {}
    for index, (name, tail) in enumerate(zip(names, tails)):
        if len(name) <= LABEL_WIDTH:
            labels[name] = name
        elif len(tail) <= LABEL_WIDTH and tails.count(tail) == 1 and tail not in names:
            labels[name] = tail
        else:
            labels[name] = f"#{index + 1}"
    return labels


@dataclass
class SuiteResult:
    """Everything one run found; ``to_json`` is the report format documented in docs/conformance.md."""

    implementations: dict
    properties: list[str]
    matrix: dict[str, dict[str, str]]
    verdicts: dict[str, verdicts.Verdict]
    outcomes: list[Outcome]
    options: dict
    pytest_exit_code: int
    duration_s: float
    pytest_args: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 conformant, 1 a failure, 2 the suite could not run, 3 only within declared limits or what it answered,
        or too little evidence."""
        if self.pytest_exit_code not in (0, 1, 5):
            return verdicts.USAGE_ERROR
        return verdicts.exit_code(self.verdicts)

    @property
    def failed(self) -> bool:
        return self.exit_code == 1

    @property
    def judged(self) -> bool:
        """Whether pytest ran to its end (passed, failed, or collected nothing): an interrupted run (SIGINT) or
        one pytest could not complete is judged by no one, whatever its partial cells say."""
        return self.pytest_exit_code in (0, 1, 5)

    def not_judged(self) -> str:
        return (f"not judged: the run was interrupted or pytest could not complete it (pytest exit "
                f"{self.pytest_exit_code})")

    def to_json(self) -> dict:
        return {"implementations": self.implementations, "tiers": verdicts.TIERS, "properties": self.properties,
                "matrix": self.matrix,
                "verdicts": {name: asdict(v) if self.judged else {"verdict": self.not_judged()}
                             for name, v in self.verdicts.items()},
                "exit_code": self.exit_code, "options": self.options,
                "results": [asdict(o) for o in self.outcomes], "pytest_exit_code": self.pytest_exit_code,
                "duration_s": round(self.duration_s, 2), "pytest_args": self.pytest_args}

    def header(self) -> list[str]:
        """What was run and under which limits, wrapped to :data:`WIDTH` columns."""
        o = self.options
        limits = f"{o['timeout']:g} s per call, {o['memory_limit_gib']:g} GiB"
        where = f"worker processes ({limits})" if o["isolate"] else \
            f"--impl in worker processes ({limits}), project backends in-process"
        lines = [f"conformance: --framework {o['framework']} (device {o['device']}), "
                 f"{o['max_examples'] or 'profile default'} examples per property, {where}"]
        for name, description in self.implementations.items():
            if description["declared_limits"]:
                limits = ", ".join(f"{k}={v!r}" for k, v in description["declared_limits"].items())
                lines.append(f"declared limits of {name}: {limits}")
        return [wrapped for line in lines for wrapped in textwrap.wrap(line, WIDTH, subsequent_indent="    ")]

    def format_matrix(self) -> str:
        """The header, one table per group of columns that fits :data:`WIDTH`, a legend, and the verdicts."""
        names = list(self.implementations)
        labels = column_labels(names)
        prop_width = 2 + max(len(p) for p in verdicts.PROPERTIES)
        cell_width = max([11] + [len(label) for label in labels.values()])
        per_table = max(1, (WIDTH - prop_width) // (cell_width + 2))
        lines = self.header()
        for start in range(0, len(names), per_table):
            columns = names[start:start + per_table]
            lines += ["", ("property".ljust(prop_width) + "".join(
                "  " + labels[n].ljust(cell_width) for n in columns)).rstrip()]
            for tier, title in (("correct", "correct (required)"),
                                ("strict", "strict (required with --strict and for the project's backends)"),
                                ("capabilities", "capabilities (informational; a wrong answer fails)")):
                rows = [p for p in verdicts.TIERS[tier] if p in self.matrix]
                if rows:
                    lines.append(title)
                for prop in rows:
                    lines.append(("  " + prop.ljust(prop_width - 2) + "".join(
                        "  " + self.matrix[prop].get(n, verdicts.NOT_RUN).ljust(cell_width) for n in columns)).rstrip())
        legend = [f"{labels[n]} = {n}" for n in names if labels[n] != n]
        if legend:
            lines += [""] + legend
        failures = [o for o in self.outcomes if o.outcome == "failed"]
        if failures:
            lines += ["", "failures (first per property and implementation):"]
            seen = set()
            for o in failures:
                if (o.property, o.implementation) not in seen:
                    seen.add((o.property, o.implementation))
                    optional = verdicts.TIER_OF.get(o.property) == "strict" and o.implementation in self.verdicts \
                        and not self.verdicts[o.implementation].strict_required
                    lines += diagnosis.failure_lines(
                        f"{labels.get(o.implementation, o.implementation)} {o.property}"
                        f"{' (strict tier, not required)' if optional else ''}", o, WIDTH,
                        [s for s in self.outcomes if (s.property, s.implementation) == (o.property, o.implementation)])
        lines += ["", "verdicts:"]
        for name, v in self.verdicts.items():
            if not self.judged:
                lines.append(f"  {labels[name]}: {self.not_judged()}")
                continue
            because = f" ({'; '.join(v.reasons)})" if v.reasons else ""
            lines += textwrap.wrap(textwrap.shorten(f"{labels[name]}: {v.verdict}{because}", 600, placeholder=" [...]"),
                                   WIDTH, initial_indent="  ", subsequent_indent="    ")
        meaning = {0: "conformant", 1: "a failure", 2: "the suite could not run",
                   3: "conformant only within declared limits or within what it answered, or too little evidence"}
        lines.append(f"exit code {self.exit_code}: {meaning[self.exit_code]}")
        return "\n".join(lines)


def run_suite(backends=(), impls=(), max_examples=None, properties=None, *, framework="numpy", device="cpu",
              isolate=False, timeout=DEFAULT_TIMEOUT, strict=False, shrink=True, extra_args=(),
              import_timeout=DEFAULT_IMPORT_TIMEOUT, memory_limit_gib=DEFAULT_MEMORY_LIMIT_GIB) -> SuiteResult:
    """Run the op-level properties on the chosen implementations and return the collected :class:`SuiteResult`.

    ``backends``: project backend names of ``framework`` (default: all of them, unless ``impls`` is given);
    ``impls``: ``package.module[:attr]`` specs (run in worker processes); ``properties``: property names to run
    (default: all); ``isolate``: run the project's backends in worker processes too; ``timeout``: seconds per
    call in a worker; ``import_timeout`` (seconds) and ``memory_limit_gib``: the worker's import time and address
    space; ``strict``: require the strict tier of every implementation (it is always required of the
    project's backends); ``shrink=False``: report failing examples as first drawn (faster; same verdicts).
    """
    names = list(dict.fromkeys(list(backends) + list(impls))) or list(PROJECT_BACKENDS[framework])
    # Hypothesis is imported before pytest starts here, so pytest cannot rewrite its asserts: expected.
    # No cache, and no unraisable-exception plugin: its collections of every generation at the end cost 0.6 s
    # of CPU per run once torch is loaded, more than judging a broken implementation.
    args = [*PROPERTY_FILES, "-q", "--tb=short", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
            "--framework", framework, "--device", device, "--timeout", str(timeout),
            "--import-timeout", str(import_timeout), "--memory-limit", str(memory_limit_gib), *extra_args]
    args += [arg for name in backends for arg in ("--backend", name)]
    args += [arg for spec in impls for arg in ("--impl", spec)]
    args += ["--isolate"] if isolate else []
    args += [] if shrink else ["--no-shrink"]
    args += ["--max-examples", str(max_examples)] if max_examples is not None else []
    loaded = {name: cached_load(name, framework, device, isolate=isolate, timeout=timeout,
                                import_timeout=import_timeout, memory_limit_gib=memory_limit_gib)
              for name in names}
    implementations = {name: implementation.describe() for name, implementation in loaded.items()}
    collector = Collector(properties)
    started = time.perf_counter()
    exit_code = int(pytest.main(args, plugins=[collector]))
    duration = time.perf_counter() - started
    from hypothesis import settings  # the examples per property the session ran (conftest's prove fixture)

    examples = max_examples or settings().max_examples

    outcomes = list(collector.outcomes.values())
    run = {o.property for o in outcomes}
    ordered = [p for p in verdicts.PROPERTIES if p in run] + sorted(run - set(verdicts.PROPERTIES))
    matrix = {p: {n: verdicts.cell(p, [o for o in outcomes if o.property == p and o.implementation == n])
                  for n in names} for p in ordered}
    judged = {
        n: verdicts.judge({p: matrix[p][n] for p in ordered}, implementations[n],
                          strict or n in PROJECT_BACKENDS[framework],
                          excluded_core_cases(implementations[n]["declared_limits"]),
                          nothing_computed=sum(o.declined for o in outcomes if o.property == verdicts.CORE
                                               and o.implementation == n) >= len(CORE),
                          evidence=evidence([o for o in outcomes if o.implementation == n]),
                          narrowed=narrowed_by(implementations[n]["declared_limits"], examples))
        for n in names
    }
    for n, judged_verdict in judged.items():
        diagnosis.explain_verdict(judged_verdict, [o for o in outcomes if o.implementation == n])
    options = {"framework": framework, "device": device, "max_examples": max_examples, "timeout": timeout,
               "import_timeout": import_timeout, "memory_limit_gib": memory_limit_gib,
               "isolate": isolate, "strict": strict, "shrink": shrink, "properties": list(properties or [])}
    return SuiteResult(implementations, ordered, matrix, judged, outcomes, options, exit_code, duration, args)


def evidence(outcomes: list[Outcome]) -> dict[str, verdicts.Evidence]:
    """Property -> :class:`~involution.conformance.verdict.Evidence` of one implementation's outcomes."""
    found: dict[str, verdicts.Evidence] = {}
    for o in outcomes:
        item = found.setdefault(o.property, verdicts.Evidence())
        item.answered += o.answered
        item.declined += o.declined
        item.reasons = dict(Counter(item.reasons) + Counter(o.declined_reasons))
        item.detail = item.detail or o.detail
    return found


def write_report(result: SuiteResult, path) -> None:
    """Write ``result`` as JSON to ``path``, atomically (``involution.arguments.write_atomically``)."""
    write_atomically(path, json.dumps(result.to_json(), indent=2) + "\n")
