"""Starts a grandchild in its own session that would live forever, records its pid, then hangs."""
import os
import time

from hostile_implementations import record

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    child = os.fork()
    if child == 0:
        if os.fork() == 0:  # the grandchild: its own session, then forever
            os.setsid()
            record("grandchild")
            while True:
                time.sleep(1)
        os._exit(0)  # the middle process ends at once: the grandchild is an orphan
    os.waitpid(child, 0)
    time.sleep(3600)
