"""``ReLU``: ``max(x, 0)``; its gradient passes where the input was positive."""
from __future__ import annotations

import numpy as np

from .module import Module


class ReLU(Module):
    """``out = max(x, 0)``, any shape; ``backward`` passes ``grad`` where ``x > 0`` (0 at ``x == 0``, as torch)."""

    def forward(self, x):
        self._cache = x > 0
        return np.maximum(x, 0)

    def backward(self, grad_output):
        return np.where(self.saved(), grad_output, 0).astype(grad_output.dtype, copy=False)
