"""Right answers, but on its first call interrupts the CLI (SIGINT to its guard's parent), hoping the partial run
is reported with a verdict."""
import os
import signal
import time

from hostile_implementations import record
from involution.reference import involution2d as reference

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    flag = os.environ["HOSTILE_LOG"] + ".interrupted"
    if not os.path.exists(flag):
        open(flag, "w").close()
        with open(f"/proc/{os.getppid()}/stat") as stat:  # the parent is the guard; its parent the CLI
            os.kill(int(stat.read().rpartition(")")[2].split()[1]), signal.SIGINT)
        time.sleep(0.5)
    return reference(x, kernel, stride, padding, dilation)
