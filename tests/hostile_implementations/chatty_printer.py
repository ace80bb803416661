"""Prints megabytes to stdout and stderr, with ANSI escape codes (also in its error message), then fails."""
import sys

from hostile_implementations import record

record("imported")
LINE = "\x1b[2J\x1b[31mchatty\x1b[0m " + "x" * 100 + "\n"


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    sys.stdout.write(LINE * 20_000)
    sys.stderr.write(LINE * 20_000)
    sys.stdout.flush()
    raise ValueError("\x1b[2J\x1b[1;31mred alert\x1b[0m: nothing computed")
