"""``BatchNorm2d`` with torch's semantics: batch statistics in training, running statistics in evaluation."""
from __future__ import annotations

import numpy as np

from .init import parameter_dtype
from .module import Module, Parameter
from involution.spec import check_int

AXES = (0, 2, 3)  # statistics are per channel, over batch and space


class BatchNorm2d(Module):
    """``out = weight * (x - mean) / sqrt(var + eps) + bias`` per channel, ``x (B, C, H, W)``.

    Training: ``mean``/``var`` are the (biased) batch statistics; ``running_mean``/``running_var`` move by
    ``momentum`` towards the batch mean and the *unbiased* batch variance, and ``num_batches_tracked`` counts
    the calls, exactly as ``torch.nn.BatchNorm2d``. Evaluation: the running statistics are used.

    An empty batch gives an empty output and leaves the running statistics as they were (``num_batches_tracked``
    still counts the call), as torch does. Training on exactly one value per channel is a ``ValueError``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *, dtype=np.float32):
        super().__init__()
        num_features, dtype = check_int(num_features, "num_features", minimum=1), parameter_dtype(dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x):
        x = self.check_input(x, self.num_features)
        count = x.size // self.num_features
        batch_statistics = self.training and count > 0  # nothing to average over an empty batch
        if self.training and count == 1:
            raise ValueError(f"{self.describe()}: training needs more than 1 value per channel to compute a "
                             f"variance, got input shape {x.shape} (use a larger batch or input, or eval())")
        if self.training:
            self.num_batches_tracked = np.array(self.num_batches_tracked + 1)
        if batch_statistics:
            mean = x.mean(axis=AXES)
            var = x.var(axis=AXES)
            momentum = self.momentum
            self.running_mean = ((1 - momentum) * self.running_mean + momentum * mean).astype(x.dtype)
            self.running_var = ((1 - momentum) * self.running_var
                                + momentum * var * (count / (count - 1))).astype(x.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = (1 / np.sqrt(var + self.eps)).astype(x.dtype)
        x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
        self._cache = (x_hat, inv_std, batch_statistics)
        return x_hat * self.weight.data[:, None, None] + self.bias.data[:, None, None]

    def backward(self, grad_output):
        x_hat, inv_std, batch_statistics = self.saved()
        grad_weight = (grad_output * x_hat).sum(axis=AXES)
        grad_bias = grad_output.sum(axis=AXES)
        self.weight.accumulate(grad_weight)
        self.bias.accumulate(grad_bias)
        scale = (self.weight.data * inv_std)[:, None, None]
        if not batch_statistics:  # running statistics are constants
            return grad_output * scale
        # d/dx of the batch-normalised x: remove the components along 1 and along x_hat (per channel).
        count = grad_output.size // self.num_features
        return scale * (grad_output - (grad_bias / count)[:, None, None]
                        - x_hat * (grad_weight / count)[:, None, None])
