"""The involution op in plain PyTorch, one strided slice per kernel tap: differentiable, compilable, any device.

``out = sum_{u, v} kernel[:, :, u, v] * x_pad[..., u*dh : u*dh + (Ho-1)*sh + 1 : sh, v*dw : v*dw + (Wo-1)*sw + 1 : sw]``
per group: the definition as a PyTorch user writes it, with no ``Kh*Kw``-fold copy of the input (unlike
``torch.nn.functional.unfold``). Autograd gives both gradients; ``torch.compile`` fuses the tap sum. It is the
``"taps"`` backend of the torch modules and the "compiled tap loop" that ``python -m involution bench`` compares
the numba kernels against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_tensors


def involution2d(x: torch.Tensor, kernel: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Involution as a sum of ``Kh*Kw`` strided slices of the padded input; differentiable in ``x`` and ``kernel``.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W), floating point, any device
    kernel : Tensor, shape (B, G, Kh, Kw, Ho, Wo), dtype and device of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
        ``Ho = (H + 2*ph - dh*(Kh-1) - 1) // sh + 1``, likewise ``Wo`` (:func:`involution.spec.output_size`).

    Returns
    -------
    out : Tensor, shape (B, C, Ho, Wo), dtype and device of ``x``. Each output sums its ``Kh*Kw`` taps in the
    tensor's dtype, tap by tap in row-major order.

    Raises
    ------
    TypeError, ValueError
        As :func:`involution.torch.checks.check_tensors`.
    """
    g = check_tensors(x, kernel, stride, padding, dilation)
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    x_pad = F.pad(x, (pw, pw, ph, ph)).view(g.batch, g.groups, g.group_channels, g.height + 2 * ph, g.width + 2 * pw)
    out = x.new_zeros(g.batch, g.groups, g.group_channels, g.out_h, g.out_w)
    for u in range(g.kernel_h):
        rows = slice(u * dh, u * dh + (g.out_h - 1) * sh + 1, sh)
        for v in range(g.kernel_w):
            cols = slice(v * dw, v * dw + (g.out_w - 1) * sw + 1, sw)
            out = out + kernel[:, :, None, u, v] * x_pad[:, :, :, rows, cols]
    return out.reshape(g.out_shape)
