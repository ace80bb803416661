"""Deliberately broken implementations: the meta-tests assert that the conformance suite catches each one.

Each attribute is an implementation for ``--impl involution.conformance.broken:NAME``: one bug on top of the
NumPy reference, every other part correct (so a failure points at the bug, and validation still works).
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np

from involution.reference import involution2d, involution2d_backward
from involution.reference.op import pad, windows
from involution.spec import check_involution2d, check_involution2d_backward


def _wrong_group_rule_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Channel c uses group ``c % G`` instead of ``c // (C // G)``."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    # Interleave channels so that the reference's block rule sees channel c in block c % G, then undo it.
    order = np.arange(g.channels).reshape(g.group_channels, g.groups).T.reshape(-1)
    out = involution2d(x[:, order], kernel, g.stride, g.padding, g.dilation)
    return out[:, np.argsort(order)]


def _padding_off_by_one_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Reads the padded input one row and one column too early, as if top/left padding were one larger."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    shifted = np.pad(x, ((0, 0), (0, 0), (1, 0), (1, 0)))[:, :, :g.height, :g.width]
    return involution2d(shifted, kernel, g.stride, g.padding, g.dilation)


def _dilation_ignored_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Takes adjacent taps (dilation 1) whatever the dilation; sizes still follow the real dilation."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    taps = windows(pad(x, g), dataclasses.replace(g, dilation=(1, 1)))
    return np.einsum("bgcuvij,bguvij->bgcij", taps, kernel).reshape(g.out_shape)


def _float32_accumulation_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Computes in float32 whatever the input dtype, then casts back."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out = involution2d(x.astype(np.float32), kernel.astype(np.float32), g.stride, g.padding, g.dilation)
    return out.astype(x.dtype)


def _stride_ignored_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """``grad_x`` scatters output pixel i to input row ``i + u*dh`` (stride 1); ``grad_kernel`` is correct."""
    grad_out, x, kernel, g = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    _, grad_kernel = involution2d_backward(grad_out, x, kernel, g.stride, g.padding, g.dilation)
    (dh, dw), (ph, pw) = g.dilation, g.padding
    grad_x_padded = np.zeros_like(pad(x, g))
    by_group = grad_x_padded.reshape(g.batch, g.groups, g.group_channels, *grad_x_padded.shape[2:])
    grad_out = grad_out.reshape(g.batch, g.groups, g.group_channels, g.out_h, g.out_w)
    for u in range(g.kernel_h):
        for v in range(g.kernel_w):
            by_group[..., u * dh:u * dh + g.out_h, v * dw:v * dw + g.out_w] += kernel[:, :, None, u, v] * grad_out
    return grad_x_padded[:, :, ph:ph + g.height, pw:pw + g.width].copy(), grad_kernel


wrong_group_rule = SimpleNamespace(involution2d=_wrong_group_rule_forward, involution2d_backward=involution2d_backward)
padding_off_by_one = SimpleNamespace(involution2d=_padding_off_by_one_forward,
                                     involution2d_backward=involution2d_backward)
dilation_ignored = SimpleNamespace(involution2d=_dilation_ignored_forward, involution2d_backward=involution2d_backward)
float32_accumulation = SimpleNamespace(involution2d=_float32_accumulation_forward,
                                       involution2d_backward=involution2d_backward)
stride_ignored_in_backward = SimpleNamespace(involution2d=involution2d, involution2d_backward=_stride_ignored_backward)

# name -> the properties (test function names without ``test_``) that must catch it.
CAUGHT_BY = {
    "wrong_group_rule": ["forward_matches_oracle", "constant_kernel_equals_depthwise_conv2d",
                         "one_hot_kernel_shifts_input"],
    "padding_off_by_one": ["forward_matches_oracle", "one_hot_kernel_shifts_input"],
    "dilation_ignored": ["forward_matches_oracle", "one_hot_kernel_shifts_input"],
    "float32_accumulation": ["forward_matches_oracle"],
    "stride_ignored_in_backward": ["backward_matches_autograd", "backward_matches_finite_differences"],
}
