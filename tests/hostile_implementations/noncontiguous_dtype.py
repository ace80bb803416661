"""Right values, but a non-C-contiguous ``x`` takes a sloppy path that returns complex128 (``HOSTILE_DTYPE`` picks
another, e.g. float64 for float32 inputs): only forward_matches_oracle used to check the result's dtype, and the
comparison helper cast the answer to float64, dropping an imaginary part (audit finding B2)."""
import os

import numpy as np

from hostile_implementations import record
from involution.reference import involution2d as reference
from involution.reference import involution2d_backward  # noqa: F401 (the gradients are right)

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    out = reference(x, kernel, stride, padding, dilation)
    if x.flags.c_contiguous:
        return out
    dtype = np.dtype(os.environ.get("HOSTILE_DTYPE", "complex128"))
    return out.astype(dtype) + (1j if dtype.kind == "c" else 0)
