"""Wrong on every non-C-contiguous input (zeros), hidden by zeroing its inputs in place: a property that computed
its expected values from the inputs after the call would compare zeros with zeros (audit finding B1)."""
import numpy as np

from hostile_implementations import record
from involution.reference import involution2d as reference
from involution.reference import involution2d_backward  # noqa: F401 (the gradients are right)

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    if not (x.flags.c_contiguous and kernel.flags.c_contiguous):
        x[...] = 0
        kernel[...] = 0
        return np.zeros_like(reference(x, kernel, stride, padding, dilation))
    return reference(x, kernel, stride, padding, dilation)
