"""Zeros for dilation > 1 and non-square geometry, hidden behind declared limits that exclude no core case: the
suite used to draw only inside them and say "conformant", exit 0 (audit finding B3)."""
import numpy as np

from hostile_implementations import record
from involution.reference import involution2d as reference
from involution.reference import involution2d_backward  # noqa: F401 (the gradients are right)

record("imported")
CONFORMANCE_LIMITS = {"max_dilation": 1, "square_only": True}


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    out = reference(x, kernel, stride, padding, dilation)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if (dh, dw) != (1, 1) or sh != sw or ph != pw or kernel.shape[2] != kernel.shape[3]:
        return np.zeros_like(out)
    return out
