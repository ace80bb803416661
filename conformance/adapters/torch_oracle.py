"""The PyTorch oracle as an implementation: NumPy in and out around ``oracle.involution2d``, backward by autograd.

Inputs are checked with the project's one validation rule (``check_involution2d``), so bad input raises the
same ValueError/TypeError as every backend; the arithmetic is the oracle's (``torch.nn.functional.unfold``).
Plug it in with ``python -m involution conformance --impl involution.conformance.adapters.torch_oracle``.
"""
from __future__ import annotations

import numpy as np
import torch

from involution.conformance import oracle
from involution.spec import check_involution2d, check_involution2d_backward


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor holding a C-ordered, writable copy of ``array`` (any strides, read-only views included)."""
    return torch.from_numpy(np.array(array, order="C"))


def involution2d(x, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """``oracle.involution2d`` on NumPy: ``x (B, C, H, W)``, ``kernel (B, G, Kh, Kw, Ho, Wo)`` -> ``(B, C, Ho, Wo)``."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out = oracle.involution2d(as_tensor(x), as_tensor(kernel), g.stride, g.padding, g.dilation)
    return out.numpy()


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """``(grad_x (B, C, H, W), grad_kernel (B, G, Kh, Kw, Ho, Wo))`` of ``sum(involution2d(x, kernel) * grad_out)``."""
    grad_out, x, kernel, g = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    x_tensor, kernel_tensor = as_tensor(x).requires_grad_(), as_tensor(kernel).requires_grad_()
    out = oracle.involution2d(x_tensor, kernel_tensor, g.stride, g.padding, g.dilation)
    grad_x, grad_kernel = torch.autograd.grad(out, (x_tensor, kernel_tensor), as_tensor(grad_out))
    return grad_x.numpy(), grad_kernel.numpy()
