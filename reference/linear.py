"""``Linear``: ``out = x @ weight.T + bias`` (the classifier head's ``fc``)."""
from __future__ import annotations

import numpy as np

from .init import default_rng, parameter_dtype, uniform_with_std
from .module import Module, Parameter
from involution.spec import check_int


class Linear(Module):
    """Fully connected layer, ``x (B, in_features) -> (B, out_features)``; ``weight (out, in)``, ``bias (out,)``.

    Initialised like mmcls' ``LinearClsHead``: weights with standard deviation 0.01, zero bias. ``in_features``,
    ``out_features >= 1``; ``dtype`` float32 or float64 (else ``TypeError``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        dtype = parameter_dtype(dtype)
        self.weight = Parameter(uniform_with_std((out_features, in_features), 0.01, default_rng(rng), dtype))
        self.bias = Parameter(np.zeros(out_features, dtype)) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        self._cache = self.check_input(x, self.in_features, ndim=2, layout="(B, in_features)")
        out = x @ self.weight.data.T
        return out if self.bias is None else out + self.bias.data

    def backward(self, grad_output):
        self.weight.accumulate(grad_output.T @ self.saved())
        if self.bias is not None:
            self.bias.accumulate(grad_output.sum(axis=0))
        return grad_output @ self.weight.data
