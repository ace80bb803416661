"""Computes nothing: each result is an object whose unpickling makes the unpickling process compute the answer
with the suite's own oracle (and record that it ran there)."""
from hostile_implementations import record

record("imported")


def answer_from_oracle(*args):
    from involution.conformance.adapters import torch_oracle

    record("payload:results")
    return torch_oracle.involution2d(*args)


class OracleAnswer:
    def __init__(self, args):
        self.args = args

    def __reduce__(self):
        return answer_from_oracle, self.args


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    return OracleAnswer((x, kernel, stride, padding, dilation))
