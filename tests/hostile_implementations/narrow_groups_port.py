"""A port for up to 4 channels per group that declines wider groups (a core case among them), undeclared."""
from hostile_implementations import record
from involution.reference import involution2d as reference

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    if x.ndim == 4 and kernel.ndim == 6 and kernel.shape[1] and x.shape[1] // kernel.shape[1] > 4:
        raise NotImplementedError("more than 4 channels per group")
    return reference(x, kernel, stride, padding, dilation)
