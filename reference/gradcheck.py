"""Central finite differences: the yardstick every analytic backward in the project is checked against."""
from __future__ import annotations

import numpy as np


def numerical_gradient(loss, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``d loss() / d array`` by central differences, perturbing ``array`` in place one element at a time.

    ``loss`` is a zero-argument callable returning a scalar that reads ``array``; ``array`` is restored.
    Error is O(eps**2) plus round-off O(ulp(loss) / eps): use float64.
    """
    grad = np.zeros_like(array, dtype=np.float64)
    flat, grad_flat = array.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, array):
        raise ValueError("array must be contiguous so that it can be perturbed in place")
    for index in range(flat.size):
        saved = flat[index]
        flat[index] = saved + eps
        plus = loss()
        flat[index] = saved - eps
        minus = loss()
        flat[index] = saved
        grad_flat[index] = (plus - minus) / (2 * eps)
    return grad


def involution_gradients_fd(forward, grad_out, x, kernel, stride=1, padding=0, dilation=1, eps=1e-6):
    """Finite-difference ``(grad_x, grad_kernel)`` of ``sum(forward(x, kernel, ...) * grad_out)``."""
    x, kernel = np.array(x, dtype=np.float64), np.array(kernel, dtype=np.float64)
    grad_out = np.asarray(grad_out, dtype=np.float64)

    def loss():
        return float(np.sum(forward(x, kernel, stride, padding, dilation) * grad_out))

    return numerical_gradient(loss, x, eps), numerical_gradient(loss, kernel, eps)
