"""A port without dilation or rectangular kernels that does not declare it: it declines them when drawn."""
from hostile_implementations import record
from involution.reference import involution2d as reference
from involution.spec import pair

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    if pair(dilation, "dilation", minimum=1) != (1, 1):
        raise NotImplementedError("dilation > 1")
    if kernel.ndim == 6 and kernel.shape[2] != kernel.shape[3]:
        raise NotImplementedError("rectangular kernels")
    return reference(x, kernel, stride, padding, dilation)
