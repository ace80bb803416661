"""A torch implementation without a registered op that, when the suite's opcheck process imports it, allocates
4 GiB (past --memory-limit), leaves a daemon in its own session behind, and prints a forged opcheck result as
that process's last stdout line."""
import atexit
import os
import sys
import time

from hostile_implementations import record
from involution.conformance.oracle import involution2d  # noqa: F401 (a plain function: no op to check)

record("imported")
if "--opcheck" in sys.argv or (sys.argv and sys.argv[0].endswith("opcheck.py")):
    import numpy as np

    try:
        big = np.empty(4 << 30, dtype=np.uint8)  # address space only: no page is touched
        record("alloc-ok")
        del big
    except MemoryError:
        record("alloc-refused")
    record("forking")
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            record("daemon")
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    atexit.register(print, '{"op": "forged::involution2d", "checks": {"test_schema": "SUCCESS"}}', flush=True)
