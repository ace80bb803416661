"""The ``involution`` command line: one subcommand per module in ``involution.commands``.

Building the parser imports only NumPy and the standard library, so ``--help``, ``--version`` and the NumPy-only
commands work from the base install (``pip install involution``). A command whose optional dependencies are
missing exits with status 2 and one line naming the pip extra that installs them, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from dataclasses import dataclass

from involution import __version__


@dataclass(frozen=True)
class Command:
    """One subcommand: its ``module`` (``add_arguments(parser)`` and ``run(args) -> int``), its one-line ``help``
    and the pip ``extras`` its ``run`` needs beyond NumPy (checked before it runs, see :data:`EXTRAS`)."""

    module: str
    help: str
    extras: tuple[str, ...] = ()


# Each pip extra of pyproject.toml that a command may need, with the top-level modules that tell it is installed.
EXTRAS = {
    "fast": ("numba",),
    "torch": ("torch",),
    "conformance": ("pytest", "hypothesis", "torch"),
    "train": ("sklearn", "tqdm"),
}

COMMANDS = {
    "demo": Command("involution.commands.demo",
                    "the main job: op + gradient check, complexity table, conformance matrix, benchmark",
                    ("fast", "conformance")),
    "bench": Command("involution.commands.bench",
                     "time the op and whole networks on the CPU (or --backend fast-cuda)", ("fast", "torch")),
    "conformance": Command("involution.commands.conformance",
                           "run the op conformance suite on backends or your implementation", ("conformance",)),
    "complexity": Command("involution.commands.complexity",
                          "params, MACs and FLOPs of RedNet/ResNet and their detectors and segmentor, per layer"),
    "train-digits": Command("involution.commands.train_digits",
                            "train a tiny RedNet on scikit-learn's digits (NumPy layers)", ("train",)),
    "warmup": Command("involution.commands.warmup",
                      "compile and cache the fast CPU kernels ahead of the first call", ("fast",)),
}


def missing_modules(extras) -> list[str]:
    """The modules of ``extras`` (names of :data:`EXTRAS`) that cannot be imported here, in order, no repeats."""
    modules = dict.fromkeys(module for extra in extras for module in EXTRAS[extra])
    return [module for module in modules if importlib.util.find_spec(module) is None]


def install_hint(extras) -> str:
    """``pip install 'involution[a,b]'`` for ``extras``."""
    return f"pip install 'involution[{','.join(extras)}]'"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered (imports no optional dependency)."""
    parser = argparse.ArgumentParser(prog="involution", description=__doc__.partition("\n")[0])
    parser.add_argument("--version", action="version", version=f"involution {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        description = (module.__doc__ or "").replace("``", "")  # docstrings are reST; a terminal shows plain text
        if command.extras:
            description += f" Needs {install_hint(command.extras)}."
        sub = subparsers.add_parser(name, help=help_text(command), description=description)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, extras=command.extras)
    return parser


def help_text(command: Command) -> str:
    """The subcommand's line in ``involution --help``, with the extras it needs."""
    return f"{command.help} [{','.join(command.extras)}]" if command.extras else command.help


def main(argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return its exit code.

    Returns 2, after one line on stderr naming the pip extra to install, when the subcommand's optional
    dependencies are missing (checked before it runs; a known optional module that fails to import while it runs
    is reported the same way).
    """
    args = build_parser().parse_args(argv)
    missing = missing_modules(args.extras)
    if missing:
        return missing_extra(args.command, args.extras, missing)
    try:
        return int(args.run(args) or 0)
    except ModuleNotFoundError as error:
        extras = [extra for extra, modules in EXTRAS.items() if (error.name or "").split(".")[0] in modules]
        if not extras:
            raise
        return missing_extra(args.command, extras[:1], [error.name])


def missing_extra(command: str, extras, missing) -> int:
    """Print the one line that says what to install; return exit status 2."""
    print(f"involution {command}: needs {', '.join(missing)}, not installed here: {install_hint(extras)}",
          file=sys.stderr)
    return 2
