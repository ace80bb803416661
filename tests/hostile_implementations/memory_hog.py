"""Allocates (and touches) 3 GiB per call: without an address-space limit a few of these bring in the OOM killer."""
import numpy as np

from hostile_implementations import record

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    hog = np.ones(3 << 27)  # 3 GiB of float64
    return np.zeros_like(x) + hog[0]
