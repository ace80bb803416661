"""Computes the right answer, then overwrites its inputs (the worker's copies used to hide this)."""
from hostile_implementations import record
from involution.reference import involution2d as reference

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    out = reference(x, kernel, stride, padding, dilation)
    x[...] = 0
    kernel[...] = 0
    return out
