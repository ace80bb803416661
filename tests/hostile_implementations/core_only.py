"""Answers the core cases (right) and declines everything else."""
from hostile_implementations import record
from involution.conformance.core import CORE, core_case
from involution.reference import involution2d as reference

record("imported")
SHAPES = {core_case(entry)[0].x_shape + core_case(entry)[0].kernel_shape for entry in CORE}


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    if tuple(x.shape) + tuple(kernel.shape) not in SHAPES:
        raise NotImplementedError("only the core cases")
    return reference(x, kernel, stride, padding, dilation)
