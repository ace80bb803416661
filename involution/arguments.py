"""Argument types shared by the subcommands: each checks one value before any work starts.

Each is an ``argparse`` ``type=`` function: it returns the converted value or raises
``argparse.ArgumentTypeError`` with a message saying what was expected and what came, which argparse prints as
``involution COMMAND: error: argument --NAME: MESSAGE`` on stderr with exit code 2 -- never a traceback.
Output files follow one rule (:func:`prepare_output`, :func:`write_atomically`, ``--force``).
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
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
    """A type: a file path whose folder exists and that is not a folder (checked while parsing, so a long run
    cannot fail only when it saves). Whether it may be replaced is :func:`prepare_output`'s rule (``--force``)."""
    error = _path_error(Path(text))
    if error:
        raise argparse.ArgumentTypeError(error)
    return text


def _path_error(path: Path) -> str | None:
    if not path.parent.is_dir():
        return f"folder {str(path.parent)!r} of {str(path)!r} does not exist"
    if path.is_dir():
        return f"{str(path)!r} is a folder, expected a file path"
    return None


def add_force_argument(parser) -> None:
    """``--force``: the flag :func:`prepare_output` asks for before replacing an existing output file."""
    parser.add_argument("--force", action="store_true", help="replace an existing output file")


def prepare_output(path, force: bool, option: str) -> str | None:
    """Check, before any work, that the command can write its output file ``path``; None if it can, else the
    message of a usage error naming ``option`` (the command then exits 2).

    The one output-file rule of every command that writes a file: the folder exists, ``path`` is not a folder,
    an existing file is replaced only with ``--force``, and a file can be created in the folder (tried here:
    a temporary file is created there and removed). Write with :func:`write_atomically`.
    """
    path = Path(path)
    error = _path_error(path)
    if error is None and os.path.lexists(path) and not force:  # a dangling symlink too: writing follows it
        error = f"{str(path)!r} exists; pass --force to replace it"
    if error is None:
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"):
                pass
        except OSError as failure:
            error = f"cannot create a file in folder {str(path.parent)!r}: {failure.strerror or failure}"
    return f"{option} {error}" if error else None


def write_atomically(path, data) -> None:
    """Write ``data`` to ``path`` all at once: into a temporary file in the same folder, then renamed over
    ``path`` (``os.replace``), so that a reader sees the old file or the new one, never half of it.

    ``data`` is a str, bytes, or a function that writes the file whose name it is given (e.g. a ``.npz`` saver;
    the temporary name ends like ``path``).
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        os.fchmod(handle, 0o666 & ~umask)  # as open() would create it (mkstemp's file is private to the user)
        with os.fdopen(handle, "wb") as file:
            if not callable(data):
                file.write(data.encode() if isinstance(data, str) else data)
        if callable(data):
            data(temporary)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
