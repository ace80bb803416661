"""Run the op-level conformance suite on the project's backends or your own implementation; print a matrix.

Exit status 0 when no property fails (skips and unsupported cases are not failures), 1 when one does,
2 when an --impl cannot be loaded or pytest cannot run.
"""
from __future__ import annotations

import os
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--impl", action="append", default=[], metavar="package.module[:attr]",
                        help="implementation exposing involution2d[, involution2d_backward] (repeatable)")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="project backend: reference, fast-cpu, fast-cuda, torch (repeatable; default: all "
                             "unless --impl is given)")
    parser.add_argument("--property", action="append", default=[], metavar="NAME",
                        help="run only this property, e.g. forward_matches_oracle (repeatable; default: all)")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="hypothesis examples per property and implementation (default: the profile's)")
    parser.add_argument("--report", metavar="out.json", help="write the JSON report here")


def run(args) -> int:
    if os.getcwd() not in sys.path:  # so that --impl finds modules in the current directory
        sys.path.insert(0, os.getcwd())
    from involution.conformance.backends import PROJECT_BACKENDS, load
    from involution.conformance.runner import run_suite, write_report

    unknown = [name for name in args.backend if name not in PROJECT_BACKENDS]
    if unknown:
        print(f"error: --backend must be one of {', '.join(PROJECT_BACKENDS)}, got {', '.join(unknown)}",
              file=sys.stderr)
        return 2
    for spec in args.impl:
        reason = load(spec).skip_reason
        if reason:
            print(f"error: --impl {reason}", file=sys.stderr)
            return 2
    result = run_suite(args.backend, args.impl, args.max_examples, args.property)
    print("\n== conformance matrix (property x implementation) ==")
    print(result.format_matrix())
    for name, description in result.implementations.items():
        if description["skip_reason"]:
            print(f"skipped {name}: {description['skip_reason']}")
    if args.report:
        write_report(result, args.report)
        print(f"report written to {args.report}")
    if result.pytest_exit_code not in (0, 1, 5):
        return 2
    return 1 if result.failed else 0
