"""Implementations written as a hostile author would, each trying one way to get "conformant" without computing
right, or to harm the machine that judges it (tests/test_conformance_hostile.py runs each through the CLI).

Each records where its code ran: :func:`record` appends ``"<event> <pid>"`` to the file named by the
``HOSTILE_LOG`` environment variable (the test reads it back and checks no line names its own process).
"""
import os


def record(event: str) -> None:
    """Append ``event`` and this process's id to ``$HOSTILE_LOG`` (nothing when it is not set)."""
    path = os.environ.get("HOSTILE_LOG")
    if path:
        with open(path, "a") as log:
            log.write(f"{event} {os.getpid()}\n")


def payload(event: str):
    """What an unpickling process calls: records that a payload ran, and where."""
    record(f"payload:{event}")
    return 0


class Payload:
    """An object whose unpickling calls :func:`payload` (pickle runs what ``__reduce__`` names)."""

    def __init__(self, event: str):
        self.event = event

    def __reduce__(self):
        return payload, (self.event,)
