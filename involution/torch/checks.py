"""Validation of torch arguments of the involution op, shared by the torch backends ("fast", "taps")."""
from __future__ import annotations

import torch

from involution.spec import Geometry, check_geometry


def check_tensors(x: torch.Tensor, kernel: torch.Tensor, stride, padding, dilation, *,
                  dtypes: tuple[torch.dtype, ...] | None = None) -> Geometry:
    """Validate torch ``x`` and ``kernel`` like the NumPy backends do; return the call's :class:`Geometry`.

    Works on real, meta and fake tensors (it reads only types, dtypes, devices and shapes).

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
    kernel : Tensor, shape (B, G, Kh, Kw, Ho, Wo)
    stride, padding, dilation : int or (h, w) pair
    dtypes : tuple of torch.dtype, optional
        The dtypes the caller computes in; ``None``: any floating-point dtype.

    Raises
    ------
    TypeError
        ``x`` or ``kernel`` not a tensor, not dense (sparse, mkldnn or nested), of a dtype outside ``dtypes`` (or not floating point), or of two dtypes.
    ValueError
        Wrong number of dimensions, tensors on different devices, or any rule of :func:`involution.spec.check_geometry`.
    """
    for name, tensor, ndim, layout in (("x", x, 4, "(B, C, H, W)"), ("kernel", kernel, 6, "(B, G, Kh, Kw, Ho, Wo)")):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
        if tensor.layout != torch.strided or tensor.is_nested:
            kind = "nested" if tensor.is_nested else str(tensor.layout).removeprefix("torch.")
            raise TypeError(f"{name} must be a dense (strided) tensor, got a {kind} tensor (layout "
                            f"{tensor.layout}); convert it with .to_dense()")
        if dtypes is None and not tensor.is_floating_point():
            raise TypeError(f"{name} must have a floating-point dtype, got {tensor.dtype}")
        if dtypes is not None and tensor.dtype not in dtypes:
            *others, last = (str(dtype).removeprefix("torch.") for dtype in dtypes)
            expected = f"{', '.join(others)} or {last}" if others else last
            raise TypeError(f"{name} must have dtype {expected}, got {str(tensor.dtype).removeprefix('torch.')}")
        if tensor.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")
    if x.dtype != kernel.dtype:
        raise TypeError(f"x and kernel must have the same dtype, got x {x.dtype} and kernel {kernel.dtype}")
    if x.device != kernel.device:
        raise ValueError(f"x and kernel must be on one device, got x on {x.device} and kernel on {kernel.device}")
    return check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation)
