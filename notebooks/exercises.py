"""Answer checks for the notebooks' exercises, written so that a check cell never shows its answer.

A notebook's exercise has an *answer cell* the learner edits (``answer = ...``) and a *check cell* that calls
:func:`check` with the answer and a digest of the expected value: the SHA-256 of the exercise's name and the
normalised value (:func:`normalised`), so the check cell, and a static render of the notebook, do not give the
answer away. ``tests/test_notebooks.py`` holds the solutions and verifies every digest in the notebooks against
them.
"""
from __future__ import annotations

import hashlib
import numbers

UNANSWERED = Ellipsis


def normalised(value) -> str:
    """The text a value is hashed as: an integer as its digits, a real number to 2 decimals, a string lower-cased
    with its runs of spaces made one, a list, tuple or set of integers sorted and comma-separated; anything else is
    refused with a ``TypeError`` naming what came."""
    if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(item, numbers.Integral) and not isinstance(item, bool) for item in value):
        return ",".join(str(int(item)) for item in sorted(value))
    if isinstance(value, bool):
        raise TypeError(f"answer: expected a number or a word, got a bool ({value!r})")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.2f}"
    if isinstance(value, str):
        return " ".join(value.lower().split())
    raise TypeError(f"answer: expected a number, a word or a list of integers, got {type(value).__name__} ({value!r})")


def digest(name: str, value) -> str:
    """The first 16 hex digits of SHA-256 over ``"name=normalised(value)"``."""
    return hashlib.sha256(f"{name}={normalised(value)}".encode()).hexdigest()[:16]


def check(name: str, answer, expected_digest: str) -> None:
    """Print whether ``answer`` to exercise ``name`` is right; ``...`` (not answered yet) is reported, not failed.

    A wrong answer is printed as such rather than raised, so that the notebook still runs to its end.
    """
    if answer is UNANSWERED:
        print(f"{name}: not answered yet (replace the ... in the answer cell above, then re-run both cells)")
        return
    print(f"{name}: {'right' if digest(name, answer) == expected_digest else 'not right yet, try again'}")
