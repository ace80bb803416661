"""Returns zeros, and hides a pickle payload in its declared limits (the payload patched the verdict when the
parent unpickled the worker's description)."""
import numpy as np

from hostile_implementations import Payload, record

record("imported")
CONFORMANCE_LIMITS = {"max_work": Payload("limits")}


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    return np.zeros_like(x)
