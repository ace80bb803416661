"""The PyTorch oracle: involution written with ``torch.nn.functional.unfold``, independent of the NumPy reference.

It follows the official naive code (d-li14/involution, ``involution_naive``: unfold the input, view it as
``(B, G, C//G, Kh, Kw, Ho, Wo)``, multiply by the kernel broadcast over the group's channels, sum the taps)
and extends it to stride, padding, dilation, rectangular kernels and odd sizes. It deliberately does not
import ``involution.reference``: the conformance suite judges the project's code against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or an (h, w) pair of ints) as a pair."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    return items


def involution2d(x: torch.Tensor, kernel: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Involution of ``x`` with a per-position, per-group ``kernel``; differentiable in both.

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``,
    ``g = c // (C // G)``, ``x_pad`` zero-padded by ``padding``.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W), floating point
    kernel : Tensor, shape (B, G, Kh, Kw, Ho, Wo), dtype of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
        ``Ho = (H + 2*ph - dh*(Kh-1) - 1) // sh + 1``, likewise ``Wo``.

    Returns
    -------
    out : Tensor, shape (B, C, Ho, Wo), dtype of ``x``
    """
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if kernel.dim() != 6:
        raise ValueError(f"kernel must be 6-D (B, G, Kh, Kw, Ho, Wo), got shape {tuple(kernel.shape)}")
    if not x.is_floating_point() or x.dtype != kernel.dtype:
        raise TypeError(f"x and kernel must share one floating dtype, got x {x.dtype} and kernel {kernel.dtype}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    batch, channels, height, width = x.shape
    k_batch, groups, kernel_h, kernel_w, k_out_h, k_out_w = kernel.shape
    if k_batch != batch or groups < 1 or channels % groups:
        raise ValueError(f"kernel {tuple(kernel.shape)} needs batch {batch} and groups G dividing C={channels}")
    out_h, out_w = (
        (size + 2 * pad - dil * (k - 1) - 1) // step + 1
        for size, k, step, pad, dil in zip((height, width), (kernel_h, kernel_w), stride, padding, dilation)
    )
    if out_h < 1 or out_w < 1 or (k_out_h, k_out_w) != (out_h, out_w):
        raise ValueError(
            f"kernel spatial size {k_out_h}x{k_out_w} must equal the output size {out_h}x{out_w} (>= 1) of "
            f"input {height}x{width}, kernel {kernel_h}x{kernel_w}, stride {stride}, padding {padding}, "
            f"dilation {dilation}"
        )
    columns = F.unfold(x, (kernel_h, kernel_w), dilation=dilation, padding=padding, stride=stride)
    taps = columns.view(batch, groups, channels // groups, kernel_h, kernel_w, out_h, out_w)
    out = (kernel.unsqueeze(2) * taps).sum(dim=(3, 4))
    return out.reshape(batch, channels, out_h, out_w)
