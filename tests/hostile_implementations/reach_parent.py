"""Correct, but at import (in the worker) tries two ways into the CLI's process: it plants ``timeit.py`` in the
working directory (the CLI's too), hoping the CLI imports it later, and opens the CLI's ``/proc/<pid>/mem`` for
writing (possible for the same user, or root, when the CLI is dumpable and the worker may ptrace)."""
import os

from hostile_implementations import record
from involution.reference import involution2d  # noqa: F401

record("imported")
SHADOW = '''
import os, sys
from hostile_implementations import record
record("shadow")
os.unlink(__file__)
del sys.modules["timeit"]
saved = list(sys.path)
sys.path[:] = [entry for entry in sys.path if entry not in ("", os.getcwd())]
import timeit as real
sys.path[:] = saved
sys.modules["timeit"] = real
'''
if not os.path.exists("timeit.py"):
    with open("timeit.py", "w") as shadow:
        shadow.write(SHADOW)
try:  # this process's parent is the worker's guard; the guard's parent is the CLI
    with open(f"/proc/{os.getppid()}/stat") as stat:
        cli = int(stat.read().rpartition(")")[2].split()[1])
    with open(f"/proc/{cli}/mem", "r+b"):
        record("mem-opened")
except OSError:
    record("mem-refused")
