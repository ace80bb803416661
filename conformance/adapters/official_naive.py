"""The official naive involution (d-li14/involution, ``involution_naive.py``) ported to NumPy at op level.

The official module computes ``nn.Unfold(K, dilation=1, padding=(K-1)//2, stride)(x)``, views it as
``(B, G, C//G, K*K, Ho, Wo)``, multiplies by the kernel ``(B, G, K*K, Ho, Wo)`` broadcast over the group's
channels and sums the taps. So at op level it can only express:

* square ``K x K`` kernels and one stride for both axes;
* dilation 1;
* padding ``(K - 1) // 2`` (the "same" padding for odd K).

Anything else raises ``NotImplementedError`` (the suite reports it as "unsupported", never as a failure),
and ``CONFORMANCE_LIMITS`` tells the suite to draw only expressible cases. Invalid input raises the
project's ValueError/TypeError first. Not reachable here, only in the official *module*: its kernel is
generated from ``AvgPool2d(stride)(x)``, ``floor(H / s)`` rows, while the unfold gives ``ceil(H / s)`` rows
for odd ``H`` with ``stride > 1``, so the official module fails on such inputs; at op level the kernel is
given with the right size. There is no backward (the official code relies on autograd), so gradient
properties skip. Try it: ``python -m involution conformance --impl involution.conformance.adapters.official_naive``.
"""
from __future__ import annotations

import numpy as np

from involution.spec import check_involution2d

CONFORMANCE_LIMITS = {"square_only": True, "max_dilation": 1, "same_padding_only": True}


def unfold(x: np.ndarray, kernel_size: int, padding: int, stride: int, out_h: int, out_w: int) -> np.ndarray:
    """``torch.nn.Unfold(kernel_size, 1, padding, stride)`` as ``(B, C, K*K, Ho, Wo)`` (tap-major like torch)."""
    x_padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    taps = [x_padded[:, :, u:u + (out_h - 1) * stride + 1:stride, v:v + (out_w - 1) * stride + 1:stride]
            for u in range(kernel_size) for v in range(kernel_size)]
    return np.stack(taps, axis=2)


def involution2d(x, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """``x (B, C, H, W)``, ``kernel (B, G, K, K, Ho, Wo)`` -> ``(B, C, Ho, Wo)`` by the official formula."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    size = g.kernel_h
    if g.kernel_w != size or g.stride[0] != g.stride[1]:
        raise NotImplementedError(f"official involution: square kernels and strides only, got kernel "
                                  f"{g.kernel_h}x{g.kernel_w}, stride {g.stride}")
    if g.dilation != (1, 1) or g.padding != ((size - 1) // 2,) * 2:
        raise NotImplementedError(f"official involution: dilation 1 and padding (K-1)//2 = {(size - 1) // 2} only, "
                                  f"got dilation {g.dilation}, padding {g.padding}")
    columns = unfold(x, size, g.padding[0], g.stride[0], g.out_h, g.out_w)
    columns = columns.reshape(g.batch, g.groups, g.group_channels, size * size, g.out_h, g.out_w)
    weight = kernel.reshape(g.batch, g.groups, size * size, g.out_h, g.out_w)[:, :, None]
    return (weight * columns).sum(axis=3).reshape(g.out_shape)
