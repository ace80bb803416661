"""Correct forward; on its first call leaves a daemon in a session of its own behind and SIGKILLs its guard (a
killed guard kills nothing it adopted, and the parent's killpg misses the new session)."""
import os
import signal
import time

from hostile_implementations import record
from involution.reference import involution2d as reference

record("imported")


def _escape():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            record("daemon")
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    time.sleep(0.3)
    os.kill(os.getppid(), signal.SIGKILL)  # the guard


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    flag = os.environ["HOSTILE_LOG"] + ".escaped"
    if not os.path.exists(flag):
        open(flag, "w").close()
        _escape()
    return reference(x, kernel, stride, padding, dilation)
