"""The suite's adapter for ``--framework torch``: judge an implementation that takes and returns torch tensors.

The properties speak NumPy; :func:`wrap` turns a torch implementation's ``involution2d`` (and
``involution2d_backward``, if it has one) into NumPy-in, NumPy-out functions. Arrays become tensors on ``device``
with the same memory layout where torch can express it (channels-last, Fortran order and sliced views keep
their strides; reversed views, which torch cannot hold, become permuted non-contiguous tensors); results come
back as NumPy arrays of the tensor's dtype. Anything that is not an array (a bad argument in the error tables)
is passed through unchanged, and a result that is not a tensor comes back wrapped in :class:`NotATensor`, which
every check of the suite rejects with its type named (a NumPy array is not a torch implementation's answer).

Without ``involution2d_backward`` the gradients are autograd's through the implementation's forward: the
adapter checks ``grad_out``'s shape against the forward's output (a named ValueError, as a backward would)
and returns ``torch.autograd.grad``. bfloat16, which NumPy lacks, is requested with ``as_dtype="bfloat16"``:
float32 arrays are cast to bfloat16 tensors and the result is returned as float32.
"""
from __future__ import annotations

import numpy as np
import torch


def to_tensor(value, device: str, as_dtype: str | None = None):
    """``value`` as a tensor on ``device`` with ``value``'s strides where torch allows; non-arrays unchanged."""
    if not isinstance(value, np.ndarray):
        return value
    try:
        contiguous = torch.from_numpy(np.ascontiguousarray(value))
    except TypeError:  # a dtype torch does not have (object): let the implementation see the array
        return value
    if as_dtype is not None:
        contiguous = contiguous.to(getattr(torch, as_dtype))
    if value.flags.c_contiguous or value.ndim == 0:
        return contiguous.to(device)
    strides = [stride // value.itemsize for stride in value.strides]
    if min(strides) > 0:
        tensor = torch.empty_strided(value.shape, strides, dtype=contiguous.dtype, device=device)
    else:  # torch has no negative strides: keep it non-contiguous by storing the axes in reverse order
        tensor = torch.empty(value.shape[::-1], dtype=contiguous.dtype, device=device).permute(
            *reversed(range(value.ndim)))
    return tensor.copy_(contiguous)


class NotATensor:
    """What a torch implementation returned instead of a tensor; the suite's type checks fail on it."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return f"NotATensor({type(self.value).__module__}.{type(self.value).__qualname__})"


def to_numpy(value):
    """A tensor as a NumPy array (bfloat16 as float32); anything else wrapped in :class:`NotATensor`."""
    if not isinstance(value, torch.Tensor):
        return NotATensor(value)
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def wrap(forward, backward, device: str = "cpu"):
    """``(forward, backward)`` taking and returning NumPy arrays around torch functions ``forward``, ``backward``.

    ``backward`` may be ``None``: the returned backward then differentiates ``forward`` with autograd.
    """
    def numpy_forward(x, kernel, stride=1, padding=0, dilation=1, *, as_dtype=None):
        return to_numpy(forward(to_tensor(x, device, as_dtype), to_tensor(kernel, device, as_dtype),
                                stride, padding, dilation))

    def numpy_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1, *, as_dtype=None):
        grad_out_t, x_t, kernel_t = (to_tensor(a, device, as_dtype) for a in (grad_out, x, kernel))
        if backward is not None:
            results = backward(grad_out_t, x_t, kernel_t, stride, padding, dilation)
        else:
            results = autograd_backward(forward, grad_out_t, x_t, kernel_t, stride, padding, dilation)
        return tuple(to_numpy(r) for r in results) if isinstance(results, (tuple, list)) else to_numpy(results)

    return numpy_forward, numpy_backward


def autograd_backward(forward, grad_out, x, kernel, stride, padding, dilation):
    """``(grad_x, grad_kernel)`` of ``sum(forward(x, kernel) * grad_out)`` by ``torch.autograd.grad``."""
    x = x.detach().requires_grad_() if isinstance(x, torch.Tensor) else x
    kernel = kernel.detach().requires_grad_() if isinstance(kernel, torch.Tensor) else kernel
    out = forward(x, kernel, stride, padding, dilation)
    if isinstance(out, torch.Tensor) and isinstance(grad_out, torch.Tensor) and grad_out.shape != out.shape:
        raise ValueError(f"grad_out must have the output shape {tuple(out.shape)}, got {tuple(grad_out.shape)}")
    return torch.autograd.grad(out, (x, kernel), grad_out)
