"""The ``involution`` command line: one subcommand per module in ``involution.commands``."""
from __future__ import annotations

import argparse
import importlib

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS = {
    "demo": ("involution.commands.demo", "the main job: op + gradient check, complexity table, conformance matrix, benchmark"),
    "bench": ("involution.commands.bench", "time the op and whole networks on the CPU (or --backend fast-cuda)"),
    "conformance": ("involution.commands.conformance", "run the op conformance suite on backends or your implementation"),
    "complexity": ("involution.commands.complexity", "params, MACs and FLOPs of RedNet/ResNet and their detectors and segmentor, per layer"),
    "train-digits": ("involution.commands.train_digits", "train a tiny RedNet on scikit-learn's digits (NumPy layers)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="involution", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        description = (module.__doc__ or "").replace("``", "")  # docstrings are reST; a terminal shows plain text
        sub = subparsers.add_parser(name, help=help_text, description=description)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)
