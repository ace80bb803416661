"""``SGD`` with momentum and weight decay, with ``torch.optim.SGD``'s update rule (no dampening, no Nesterov)."""
from __future__ import annotations

import numpy as np


class SGD:
    """``d = grad + weight_decay * p``; ``buf = d`` on the first step, then ``buf = momentum * buf + d``;
    ``p -= lr * buf``. Parameters without a ``.grad`` are skipped, as in torch.

    Parameters
    ----------
    parameters : iterable of ``Parameter`` (e.g. ``model.parameters()``)
    lr : float, the learning rate (may be changed between steps through ``.lr``)
    momentum, weight_decay : float
    """

    def __init__(self, parameters, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        if not (0 < lr < np.inf and 0 <= momentum < np.inf and 0 <= weight_decay < np.inf):  # NaN fails too
            raise ValueError(f"need lr > 0, momentum >= 0, weight_decay >= 0, all finite; got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        self.parameters = list(parameters)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: dict[int, np.ndarray] = {}

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def step(self) -> None:
        for index, parameter in enumerate(self.parameters):
            if parameter.grad is None:
                continue
            step = parameter.grad + self.weight_decay * parameter.data if self.weight_decay else parameter.grad
            if self.momentum:
                buffer = self.buffers.get(index)
                step = step.copy() if buffer is None else self.momentum * buffer + step
                self.buffers[index] = step
            parameter.data = (parameter.data - self.lr * step).astype(parameter.data.dtype, copy=False)
