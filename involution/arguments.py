"""Argument types shared by the subcommands: each checks one value before any work starts.

Each is an ``argparse`` ``type=`` function: it returns the converted value or raises
``argparse.ArgumentTypeError`` with a message saying what was expected and what came, which argparse prints as
``involution COMMAND: error: argument --NAME: MESSAGE`` on stderr with exit code 2 -- never a traceback.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

MAX_SEED = 2**32 - 1  # the widest range every seeded library takes (NumPy's legacy RandomState, scikit-learn)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def int_at_least(minimum: int, maximum: int | None = None):
    """A type: an integer in ``[minimum, maximum]`` (no upper bound when ``maximum`` is None)."""

    def convert(text: str) -> int:
        value = _int(text)
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and <= {maximum}"
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{upper}, got {value}")
        return value

    convert.__name__ = f"int_at_least_{minimum}"
    return convert


positive_int = int_at_least(1)
seed = int_at_least(0, MAX_SEED)


def int_list(minimum: int, lengths: tuple[int, ...] | None = None):
    """A type: comma-separated integers, each ``>= minimum``, as a tuple; never empty (an empty list would read as
    "the default" somewhere else), and of one of ``lengths`` entries when given (``(1, 2)``: ``H`` or ``H,W``)."""
    entry = int_at_least(minimum)

    def convert(text: str) -> tuple[int, ...]:
        parts = text.split(",")
        if not text.strip() or any(not part.strip() for part in parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        values = tuple(entry(part) for part in parts)
        if lengths is not None and len(values) not in lengths:
            counts = " or ".join(str(length) for length in lengths)
            raise argparse.ArgumentTypeError(f"expected {counts} comma-separated integers, got {len(values)}: {text!r}")
        return values

    convert.__name__ = f"int_list_{minimum}"
    return convert


def positive_float(text: str) -> float:
    """A type: a finite float > 0 (a learning rate, a time); ``nan``, ``inf``, 0 and negatives are errors."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def output_file(text: str) -> str:
    """A type: a file path whose folder exists (checked now, so a long run cannot fail only when it saves)."""
    folder = Path(text).parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} of {text!r} does not exist")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file path")
    return text
