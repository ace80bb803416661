"""Run the op-level conformance suite on the project's backends or your own implementation; print a matrix.

Every implementation runs in a worker process with a time limit per call. Exit status: 0 conformant, 1 a
failure (a wrong value, an answer to ill-posed input, a hang, a crash), 2 usage error (checked before anything
runs), 3 conformant only within declared limits or within what it answered, or too little evidence. Nothing the
implementation sends back is unpickled; see docs/conformance.md.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import os
import sys

from involution.arguments import add_force_argument, positive_float, prepare_output

# The runner's default (involution.conformance.runner.DEFAULT_TIMEOUT; the runner imports pytest, which building the
# parser must not); tests/test_cli.py checks that the two agree.
DEFAULT_TIMEOUT = 60.0


def positive_int(text: str) -> int:
    """The runner's argument type for --max-examples, imported when a value is parsed (the runner needs pytest)."""
    try:
        from involution.conformance.runner import positive_int as convert
    except ImportError:  # the conformance extra is missing: involution.cli.main says so after parsing
        return int(text)
    return convert(text)


def positive_seconds(text: str) -> float:
    """The runner's argument type for --timeout, imported when a value is parsed (the runner needs pytest)."""
    try:
        from involution.conformance.runner import positive_seconds as convert
    except ImportError:  # the conformance extra is missing: involution.cli.main says so after parsing
        return float(text)
    return convert(text)


def add_arguments(parser) -> None:
    from involution.conformance.worker import DEFAULT_IMPORT_TIMEOUT, DEFAULT_MEMORY_LIMIT_GIB  # no pytest there

    parser.add_argument("--impl", action="append", default=[], metavar="package.module[:attr]",
                        help="implementation exposing involution2d[, involution2d_backward] (repeatable)")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="project backend (repeatable; default: all of the framework's unless --impl is "
                             "given): numpy reference, fast-cpu, fast-cuda, oracle; torch fast, taps, oracle")
    parser.add_argument("--framework", choices=("numpy", "torch"), default="numpy",
                        help="what the implementations take and return: NumPy arrays or torch tensors")
    parser.add_argument("--device", default="cpu", help="torch device for --framework torch: cpu or cuda")
    parser.add_argument("--property", action="append", default=[], metavar="NAME",
                        help="run only this property, e.g. forward_matches_oracle (repeatable; default: all)")
    parser.add_argument("--max-examples", type=positive_int, default=None, metavar="N",
                        help="hypothesis examples per property and implementation, >= 1 (default: the profile's)")
    parser.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds one call may take before it fails as a hang (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--import-timeout", type=positive_seconds, default=DEFAULT_IMPORT_TIMEOUT, metavar="S",
                        help=f"seconds a worker may take to import the implementation (default "
                             f"{DEFAULT_IMPORT_TIMEOUT:g})")
    parser.add_argument("--memory-limit", type=positive_float, default=DEFAULT_MEMORY_LIMIT_GIB, metavar="GIB",
                        help=f"address space of each worker process in GiB; an implementation that needs more fails "
                             f"(default {DEFAULT_MEMORY_LIMIT_GIB:g})")
    parser.add_argument("--strict", action="store_true",
                        help="require the strict tier (errors are ValueError/TypeError naming the argument)")
    parser.add_argument("--no-shrink", dest="shrink", action="store_false",
                        help="report a failing example as first drawn, not shrunk to a minimal one (faster)")
    parser.add_argument("--report", metavar="out.json",
                        help="write the JSON report here (checked before the run; an existing file only with --force)")
    parser.add_argument("--export-cases", metavar="DIR",
                        help="write the golden cases (the core cases and --max-examples random ones, default 20: "
                             ".npz inputs, expected values and tolerances, cases.json) to DIR and exit; a DIR "
                             "that holds files only with --force; see docs/conformance.md")
    add_force_argument(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="also print pytest's own report (tracebacks, hypothesis' reproduction lines) before the "
                             "matrix")


def usage_errors(args) -> list[str]:
    """Every problem with the arguments that can be found before anything runs."""
    from involution.conformance.backends import PROJECT_BACKENDS
    from involution.conformance.verdict import PROPERTIES

    errors = []
    valid = PROJECT_BACKENDS[args.framework]
    unknown = [name for name in args.backend if name not in valid]
    if unknown:
        errors.append(f"--backend must be a {args.framework} backend ({', '.join(valid)}), got {', '.join(unknown)}")
    unknown = [name for name in args.property if name not in PROPERTIES]
    if unknown:
        guesses = [guess for name in unknown for guess in difflib.get_close_matches(name, PROPERTIES, n=1)]
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        errors.append(f"--property must be one of {', '.join(PROPERTIES)}; got {', '.join(unknown)}{hint}")
    paths = [spec for spec in args.impl if spec.endswith(".py") or os.sep in spec]
    if paths:
        errors.append(f"--impl takes an importable module name (package.module[:attr]), not a file path; got "
                      f"{', '.join(paths)}: run from the folder that holds the file and pass its name without .py")
    if args.device != "cpu":
        if args.framework != "torch":
            errors.append(f"--device {args.device} needs --framework torch")
        else:
            import torch

            try:
                torch.empty(0, device=args.device)
            except (RuntimeError, AssertionError) as error:
                errors.append(f"--device {args.device} is not usable here: {error}")
    errors += export_errors(args)
    if args.report:
        error = prepare_output(args.report, args.force, "--report")
        if error:
            errors.append(error)
    return errors


def export_errors(args) -> list[str]:
    """What stops ``--export-cases``: a folder holding files without ``--force``, options it does not take."""
    if not args.export_cases:
        return []
    from involution.conformance.golden import refuse_to_overwrite

    refused = refuse_to_overwrite(args.export_cases, args.force)
    others = [f"--{name}" for name in ("impl", "backend", "property", "report") if getattr(args, name)]
    return ([refused] if refused else []) + (
        [f"--export-cases writes files and runs nothing: {', '.join(others)} does not apply"] if others else [])


def export_cases(args) -> int:
    """Write the golden cases; print where, how many, and how to check a kernel against them."""
    from involution.conformance.golden import export

    entries = export(args.export_cases, args.max_examples or 20)
    print(f"wrote {len(entries)} golden cases ({sum(e['name'].startswith('core_') for e in entries)} core, "
          f"{sum(e['name'].startswith('random_') for e in entries)} random) to {args.export_cases}; check a kernel "
          f"with: python -m involution.conformance.golden_check {args.export_cases} package.module[:attr]")
    return 0


def run(args) -> int:
    """The command: every process a worker started, or that escaped one, is killed before it returns (this process
    is a child subreaper while it runs, so escaped processes are re-parented to it)."""
    from involution.conformance.worker import contain, kill_strays, restore_dumpable, undumpable

    contain(restart=True)
    dumpable = undumpable()
    try:
        return _run(args)
    finally:
        from involution.conformance.backends import close_all

        close_all()
        kill_strays(everything=True)
        restore_dumpable(dumpable)


# Modules the run imports after its first worker started (pytest, its plugins, the oracle, the standard library's
# lazily imported ones): imported before any worker starts, so that nothing a worker writes can shadow them.
PRELOAD = ("timeit", "pdb", "cmd", "code", "codeop", "faulthandler", "pickletools", "pkgutil", "secrets", "tarfile",
           "tomllib", "hmac", "mmap", "cmath", "grp", "pwd", "asyncio", "concurrent.futures", "xml.etree.ElementTree",
           "http.client", "ssl", "involution.conformance.runner", "torch")


def preload() -> None:
    """Import :data:`PRELOAD` (those that are installed)."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _run(args) -> int:
    # The working directory is not put on this process's path: only the workers import from it (worker.py).
    errors = usage_errors(args)
    if not errors:
        from involution.conformance.backends import cached_load

        if not args.export_cases:
            preload()
        for spec in args.impl:  # load each in its worker now: one that cannot load is a usage error
            reason = cached_load(spec, args.framework, args.device, isolate=True, timeout=args.timeout,
                                 import_timeout=args.import_timeout, memory_limit_gib=args.memory_limit).skip_reason
            if reason:
                errors.append(f"--impl {reason}")
    if errors:
        from involution.conformance.backends import close_all

        close_all()
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    if args.export_cases:
        return export_cases(args)
    from involution.conformance.runner import run_suite, write_report

    # pytest's own report (tracebacks, hypothesis' reproduction lines) only with --verbose: the matrix says it all.
    with contextlib.redirect_stdout(sys.stdout if args.verbose else io.StringIO()):
        result = run_suite(args.backend, args.impl, args.max_examples, args.property, framework=args.framework,
                           device=args.device, isolate=True, timeout=args.timeout, strict=args.strict,
                           shrink=args.shrink, import_timeout=args.import_timeout,
                           memory_limit_gib=args.memory_limit)
    print("\n== conformance matrix (property x implementation) ==")
    print(result.format_matrix())
    if args.report:
        write_report(result, args.report)
        print(f"report written to {args.report}")
    return result.exit_code
