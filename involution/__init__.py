"""involution: reference, verified fast backends and conformance suite for the involution op and RedNet.

The front door is :func:`involution2d` and :func:`involution2d_backward`, which take NumPy arrays or torch
tensors and run a backend of :mod:`involution.backends` (default: the fastest one available for the input).
Subpackages: ``involution.spec`` (the rules), ``involution.reference`` (NumPy), ``involution.fast`` (numba CPU
and CUDA), ``involution.torch`` (PyTorch modules), ``involution.conformance`` (the test suite for any
implementation). Nothing heavy is imported until a function is called.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["involution2d", "involution2d_backward"]


# (framework, backend name or None for the default) -> the backend's module, resolved on first use and kept, so
# that a call is a dict look-up (which torch.compile traces) and not an import (which it refuses).
_RESOLVED: dict = {}


def _framework(x) -> str:
    """"torch" for a torch tensor (without importing torch), else "numpy"."""
    return "torch" if type(x).__module__.split(".")[0] == "torch" else "numpy"


def _backend_module(x, backend: str | None):
    key = (_framework(x), backend)
    module = _RESOLVED.get(key)
    if module is None:
        if key[0] == "torch":
            from involution import torch_backends  # a statement torch.compile runs while tracing

            module = _RESOLVED[key] = torch_backends.module(backend)
        else:
            module = _RESOLVED[key] = _resolve(*key)
    return module


def _resolve(framework: str, backend: str | None):
    """The module of ``backend`` of ``framework`` (``None``: the default), imported through the registry."""
    from involution import backends

    return backends.load(backends.default(framework) if backend is None else backend, framework)


def involution2d(x, kernel, stride=1, padding=0, dilation=1, *, backend: str | None = None):
    """Involution: ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``.

    ``g = c // (C // G)`` (contiguous groups, as the official code), ``x_pad`` zero-padded by ``padding``.

    Parameters
    ----------
    x : ndarray or Tensor, shape (B, C, H, W)
        float32 or float64 (torch backends also take float16 and bfloat16 where they say so).
    kernel : ndarray or Tensor, shape (B, G, Kh, Kw, Ho, Wo), dtype of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
        ``Ho = (H + 2*ph - dh*(Kh-1) - 1) // sh + 1``, likewise ``Wo`` (:func:`involution.spec.output_size`).
    backend : str, optional
        A backend of :mod:`involution.backends` for the input's framework: NumPy arrays ``"reference"``,
        ``"fast-cpu"``, ``"fast-cuda"``; torch tensors ``"fast"``, ``"taps"``. Default: the numba one where numba
        imports (``"fast-cpu"`` / ``"fast"``), else the plain one.

    Returns
    -------
    out : ndarray or Tensor, shape (B, C, Ho, Wo), dtype of ``x``

    Raises
    ------
    TypeError, ValueError
        Bad arrays or hyper-parameters (:func:`involution.spec.check_involution2d`), or an unknown ``backend``.
    ImportError
        The chosen backend's dependencies are missing; the message names the pip extra.
    """
    return _backend_module(x, backend).involution2d(x, kernel, stride, padding, dilation)


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1, *, backend: str | None = None):
    """Gradients ``(grad_x, grad_kernel)`` of :func:`involution2d` with respect to ``x`` and ``kernel``.

    Parameters
    ----------
    grad_out : ndarray or Tensor, shape (B, C, Ho, Wo), dtype of ``x``
    x, kernel, stride, padding, dilation, backend : as in :func:`involution2d`

    Returns
    -------
    grad_x : shape (B, C, H, W)
    grad_kernel : shape (B, G, Kh, Kw, Ho, Wo)

    Raises
    ------
    TypeError, ValueError, ImportError
        As :func:`involution2d`; also ``grad_out`` of the wrong shape or dtype.
    """
    module = _backend_module(x, backend)
    if not hasattr(module, "involution2d_backward"):  # a torch backend differentiated by autograd
        import torch

        x, kernel = x.detach().requires_grad_(), kernel.detach().requires_grad_()
        with torch.enable_grad():
            out = module.involution2d(x, kernel, stride, padding, dilation)
        if not isinstance(grad_out, torch.Tensor) or grad_out.shape != out.shape or grad_out.dtype != out.dtype:
            raise ValueError(f"grad_out must be a tensor of the output's shape {tuple(out.shape)} and dtype "
                             f"{out.dtype}, got {type(grad_out).__name__} {getattr(grad_out, 'shape', '')} "
                             f"{getattr(grad_out, 'dtype', '')}")
        return torch.autograd.grad(out, (x, kernel), grad_out)
    return module.involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
