"""Torch bridge: the numba kernels as a differentiable ``torch`` op, zero-copy on CPU tensors.

CPU tensors go to :mod:`involution.fast.cpu` as NumPy views (``.numpy()`` of contiguous tensors, results
wrapped by ``torch.from_numpy``); CUDA tensors go to :mod:`involution.fast.cuda` through
``__cuda_array_interface__`` on torch's current stream.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def _check_tensors(**tensors: torch.Tensor) -> torch.device:
    """The common device of ``tensors``; a named TypeError/ValueError for a non-tensor, dtype or device mix-up."""
    devices = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype torch.float32 or torch.float64, got {tensor.dtype}")
        devices[name] = tensor.device
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    return next(iter(devices.values()))


def _cpu_call(function, tensors, hyper_parameters):
    """``function`` of ``involution.fast.cpu`` on NumPy views of ``tensors``; results as tensors sharing memory."""
    results = function(*(tensor.detach().contiguous().numpy() for tensor in tensors), *hyper_parameters)
    return tuple(torch.from_numpy(result) for result in results) if isinstance(results, tuple) \
        else torch.from_numpy(results)


def _cuda_call(function, tensors, hyper_parameters):
    """``function`` of ``involution.fast.cuda`` on the tensors' device memory, on torch's current stream."""
    from numba import cuda

    device = tensors[0].device
    index = torch.cuda.current_device() if device.index is None else device.index
    with torch.cuda.device(index), cuda.gpus[index]:  # torch's and numba's current device: the tensors'
        stream = cuda.external_stream(torch.cuda.current_stream(index).cuda_stream)
        results = function(*(tensor.detach().contiguous() for tensor in tensors), *hyper_parameters, stream=stream)
    if isinstance(results, tuple):
        return tuple(torch.as_tensor(result, device=device) for result in results)
    return torch.as_tensor(results, device=device)


def _dispatch(name: str, tensors, hyper_parameters):
    """Run ``involution2d`` or ``involution2d_backward`` of the backend matching the tensors' device."""
    if tensors[0].device.type == "cuda":
        from involution.fast import cuda as backend

        return _cuda_call(getattr(backend, name), tensors, hyper_parameters)
    if tensors[0].device.type == "cpu":
        from involution.fast import cpu as backend

        return _cpu_call(getattr(backend, name), tensors, hyper_parameters)
    raise ValueError(f"x must be on a cpu or cuda device, got {tensors[0].device}")


class Involution2dFunction(torch.autograd.Function):
    """``out = involution2d(x, kernel)`` with the numba forward and backward kernels."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation):
        ctx.save_for_backward(x, kernel)
        ctx.hyper_parameters = (stride, padding, dilation)
        return _dispatch("involution2d", (x, kernel), ctx.hyper_parameters)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, kernel = ctx.saved_tensors
        grad_x, grad_kernel = _dispatch("involution2d_backward", (grad_out, x, kernel), ctx.hyper_parameters)
        return grad_x, grad_kernel, None, None, None


def involution2d(x: torch.Tensor, kernel: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Differentiable involution of torch tensors with the numba kernels (CPU, or CUDA via ``involution.fast.cuda``).

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``,
    ``g = c // (C // G)``. Validation and errors are the NumPy reference's.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W), float32 or float64
    kernel : Tensor, shape (B, G, Kh, Kw, Ho, Wo), dtype and device of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair

    Returns
    -------
    out : Tensor, shape (B, C, Ho, Wo), dtype and device of ``x``; gradients flow to ``x`` and ``kernel``
    """
    _check_tensors(x=x, kernel=kernel)
    return Involution2dFunction.apply(x, kernel, stride, padding, dilation)
