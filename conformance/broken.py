"""Deliberately broken implementations: the meta-tests assert that the conformance suite catches each one.

Each attribute is an implementation for ``--impl involution.conformance.broken:NAME``: one bug on top of the
NumPy reference, every other part correct (so a failure points at the bug, and validation still works).
:data:`CAUGHT_BY` says which exit code and failing properties catch each.
"""
from __future__ import annotations

import dataclasses
import os
import time
from types import SimpleNamespace

import numpy as np

from involution.reference import involution2d, involution2d_backward
from involution.reference.op import pad, tap_slices, windows
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


def _zero_taps_skipped_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Skips every tap whose weights are all zero (a tempting speed-up), so a NaN or Inf read there is lost."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    used = kernel.any(axis=(0, 1, 4, 5))[:, :, None, None]  # (Kh, Kw, 1, 1): broadcast over (u, v, i, j)
    taps = np.where(used, windows(pad(x, g), g), 0)
    return np.einsum("bgcuvij,bguvij->bgcij", taps, kernel).reshape(g.out_shape)


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


def _kernel_taps_transposed_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Reads the ``Kh * Kw`` taps of each kernel position as if stored column-major (tap (u, v) is weight (v, u)
    of a square kernel)."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    taps = kernel.reshape(g.batch, g.groups, g.kernel_w, g.kernel_h, g.out_h, g.out_w).transpose(0, 1, 3, 2, 4, 5)
    return involution2d(x, np.ascontiguousarray(taps), g.stride, g.padding, g.dilation)


def _last_row_dropped_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Computes ``Ho - 1`` rows when ``H`` is odd (a floor where a ceil belonged) and leaves the last row 0."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out = involution2d(x, kernel, g.stride, g.padding, g.dilation)
    if g.height % 2:
        out[:, :, -1] = 0
    return out


def _grad_kernel_first_channel_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """``grad_kernel`` from the group's first channel only, instead of the sum over its ``C // G`` channels."""
    grad_out, x, kernel, g = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_x, _ = involution2d_backward(grad_out, x, kernel, g.stride, g.padding, g.dilation)
    first_channels = np.zeros(g.channels, dtype=x.dtype)
    first_channels[::g.group_channels] = 1
    _, grad_kernel = involution2d_backward(grad_out * first_channels[:, None, None], x, kernel, g.stride, g.padding,
                                           g.dilation)
    return grad_x, grad_kernel


def _flipped_taps_forward(x, kernel, stride=1, padding=0, dilation=1):
    """A convolution: tap ``(u, v)`` weighted by ``kernel[..., Kh-1-u, Kw-1-v, ...]`` (the kernel flipped)."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    return involution2d(x, np.ascontiguousarray(kernel[:, :, ::-1, ::-1]), g.stride, g.padding, g.dilation)


def _taps_major_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Reads the kernel's ``G*Kh*Kw`` channels taps-major: weight ``(g, u, v)`` from channel ``(u*Kw + v)*G + g``
    (as if the kernel-generating conv's output were viewed ``(B, Kh*Kw, G, H, W)``)."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    taps = g.kernel_h * g.kernel_w
    channels = kernel.reshape(g.batch, taps, g.groups, g.out_h, g.out_w)  # the flat channels, split taps-major
    read = channels.transpose(0, 2, 1, 3, 4).reshape(g.kernel_shape)
    return involution2d(x, np.ascontiguousarray(read), g.stride, g.padding, g.dilation)


def _tensorflow_same_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Pads as TensorFlow's SAME does: the padding the output needs, split with the odd row/column at the
    bottom/right, instead of ``padding`` on both sides."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out = np.zeros(g.out_shape, dtype=x.dtype)
    weights = np.repeat(kernel, g.group_channels, axis=1)  # (B, C, Kh, Kw, Ho, Wo)
    tops = []
    for size, out_size, k, s, d in zip((g.height, g.width), (g.out_h, g.out_w), (g.kernel_h, g.kernel_w),
                                       g.stride, g.dilation):
        tops.append(max((out_size - 1) * s + d * (k - 1) + 1 - size, 0) // 2)
    for i in range(g.out_h):
        for j in range(g.out_w):
            for u in range(g.kernel_h):
                for v in range(g.kernel_w):
                    row, column = i * g.stride[0] + u * g.dilation[0] - tops[0], \
                        j * g.stride[1] + v * g.dilation[1] - tops[1]
                    if 0 <= row < g.height and 0 <= column < g.width:
                        out[:, :, i, j] += weights[:, :, u, v, i, j] * x[:, :, row, column]
    return out


def _floor_output_size_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Sizes the output ``H // stride`` by ``W // stride`` (a floor where the definition rounds up): computes
    only that many rows and columns, each right, when it is fewer than the kernel's."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out_h, out_w = min(g.out_h, g.height // g.stride[0]), min(g.out_w, g.width // g.stride[1])
    return involution2d(x, kernel, g.stride, g.padding, g.dilation)[:, :, :out_h, :out_w].copy()


def _interleaved_and_flipped_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Two slips at once: channel c uses group ``c % G``, and the kernel is flipped (a convolution)."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    return _wrong_group_rule_forward(x, np.ascontiguousarray(kernel[:, :, ::-1, ::-1]), g.stride, g.padding,
                                     g.dilation)


def _last_channel_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """``grad_kernel[b, g]`` assigned in a loop over the group's channels (``=`` where ``+=`` belonged): it holds
    the last channel's term only. ``grad_x`` is correct."""
    grad_out, x, kernel, g = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_x, _ = involution2d_backward(grad_out, x, kernel, g.stride, g.padding, g.dilation)
    grad_kernel = np.zeros_like(kernel)
    for channel in range(g.channels):
        group = channel // g.group_channels
        for u in range(g.kernel_h):
            for v in range(g.kernel_w):
                (out_rows, out_cols), (x_rows, x_cols) = tap_slices(g, u, v)
                tap = np.zeros((g.batch, g.out_h, g.out_w), dtype=x.dtype)
                tap[:, out_rows, out_cols] = x[:, channel, x_rows, x_cols]
                grad_kernel[:, group, u, v] = grad_out[:, channel] * tap
    return grad_x, grad_kernel


def _padded_taps_skipped_forward(x, kernel, stride=1, padding=0, dilation=1):
    """A bounds-checked gather (the paper's CUDA kernel, most C++ ports): taps that fall on the zero padding are
    skipped, not multiplied by 0. Right for every finite input; an infinite weight on a padded tap gives its
    other terms' sum where the literal formula gives ``inf * 0 = NaN``: a policy, judged in the strict tier."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    out = np.zeros(g.out_shape, dtype=x.dtype)
    weights = np.repeat(kernel, g.group_channels, axis=1)
    for u in range(g.kernel_h):
        for v in range(g.kernel_w):
            (out_rows, out_cols), (x_rows, x_cols) = tap_slices(g, u, v)
            out[:, :, out_rows, out_cols] += weights[:, :, u, v, out_rows, out_cols] * x[:, :, x_rows, x_cols]
    return out


def _raises_on_dilation_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Raises ZeroDivisionError on any dilation but 1 (valid input it must compute); right otherwise."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    if g.dilation != (1, 1):
        raise ZeroDivisionError("division by zero")
    return involution2d(x, kernel, g.stride, g.padding, g.dilation)


def _pair_unchecked(value):
    """Whatever came, as two numbers: a triple loses its last value, a float stays a float."""
    return tuple(value)[:2] if isinstance(value, (tuple, list)) else (value, value)


def _unchecked_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Correct on valid input, but validates nothing: sizes come from whatever arrays and numbers arrive."""
    (sh, sw), (ph, pw), (dh, dw) = (_pair_unchecked(v) for v in (stride, padding, dilation))
    channels, (groups, kernel_h, kernel_w, out_h, out_w) = x.shape[1], kernel.shape[1:]
    x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    weights = kernel[:, np.arange(channels) // max(channels // groups, 1)]
    out = np.zeros(x.shape[:2] + (out_h, out_w), dtype=x.dtype)
    for u in range(kernel_h):
        for v in range(kernel_w):
            rows = x_padded[:, :, u * dh::sh, v * dw::sw][:, :, :out_h, :out_w]
            out[:, :, :rows.shape[2], :rows.shape[3]] += weights[:, :, u, v, :rows.shape[2], :rows.shape[3]] * rows
    return out


def _declines_everything(x, kernel, stride=1, padding=0, dilation=1):
    """Validates its input, then computes nothing."""
    check_involution2d(x, kernel, stride, padding, dilation)
    raise NotImplementedError("this implementation declines every valid case")


def _exits_on_stride_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Ends its process (``os._exit(0)``, as a crashing C extension would end it) on any stride but 1."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    if g.stride != (1, 1):
        os._exit(0)
    return involution2d(x, kernel, g.stride, g.padding, g.dilation)


def _hangs_on_stride_forward(x, kernel, stride=1, padding=0, dilation=1):
    """Never returns on any stride but 1."""
    x, kernel, g = check_involution2d(x, kernel, stride, padding, dilation)
    while g.stride != (1, 1):
        time.sleep(1)
    return involution2d(x, kernel, g.stride, g.padding, g.dilation)


def _with_reference(forward=involution2d, backward=involution2d_backward, **attributes):
    return SimpleNamespace(involution2d=forward, involution2d_backward=backward, **attributes)


wrong_group_rule = _with_reference(_wrong_group_rule_forward)
padding_off_by_one = _with_reference(_padding_off_by_one_forward)
dilation_ignored = _with_reference(_dilation_ignored_forward)
float32_accumulation = _with_reference(_float32_accumulation_forward)
zero_taps_skipped = _with_reference(_zero_taps_skipped_forward)
stride_ignored_in_backward = _with_reference(backward=_stride_ignored_backward)
kernel_taps_transposed = _with_reference(_kernel_taps_transposed_forward)
last_row_dropped_on_odd_sizes = _with_reference(_last_row_dropped_forward)
grad_kernel_from_first_channel = _with_reference(backward=_grad_kernel_first_channel_backward)
no_validation = SimpleNamespace(involution2d=_unchecked_forward)
computes_nothing = SimpleNamespace(involution2d=_declines_everything)
# Right for G = 1 (where c % G = c // C), wrong beyond, and declares limits that keep the random draws at G = 1.
wrong_behind_narrow_limits = SimpleNamespace(involution2d=_wrong_group_rule_forward,
                                             CONFORMANCE_LIMITS={"max_kernel": 1, "max_groups": 1})
flipped_taps = _with_reference(_flipped_taps_forward)
taps_major_kernel_channels = _with_reference(_taps_major_forward)
same_padding_like_tensorflow = _with_reference(_tensorflow_same_forward)
output_size_floor_divided = _with_reference(_floor_output_size_forward)
interleaved_groups_and_flipped_taps = _with_reference(_interleaved_and_flipped_forward)
grad_kernel_from_last_channel = _with_reference(backward=_last_channel_backward)
# Two slips in the backward at once: grad_x ignores the stride, grad_kernel keeps the group's first channel only.
two_backward_slips = _with_reference(backward=lambda *args: (_stride_ignored_backward(*args)[0],
                                                              _grad_kernel_first_channel_backward(*args)[1]))
# Correct (a policy, not a bug): exit 0 without --strict, 1 with it.
padded_taps_skipped = _with_reference(_padded_taps_skipped_forward)
raises_on_dilation = _with_reference(_raises_on_dilation_forward)
exits_early = _with_reference(_exits_on_stride_forward)
hangs = _with_reference(_hangs_on_stride_forward)

# name -> (the exit code of the CLI, the properties (test names without ``test_``) that must show FAIL).
CAUGHT_BY = {
    "wrong_group_rule": (1, ["forward_matches_oracle", "constant_kernel_equals_depthwise_conv2d",
                             "one_hot_kernel_shifts_input"]),
    "padding_off_by_one": (1, ["forward_matches_oracle", "one_hot_kernel_shifts_input"]),
    "dilation_ignored": (1, ["forward_matches_oracle", "one_hot_kernel_shifts_input"]),
    "float32_accumulation": (1, ["forward_matches_oracle"]),
    "zero_taps_skipped": (1, ["nonfinite_follows_definition"]),
    "stride_ignored_in_backward": (1, ["backward_matches_autograd", "backward_matches_finite_differences"]),
    "kernel_taps_transposed": (1, ["core_cases_computed", "forward_matches_oracle"]),
    "last_row_dropped_on_odd_sizes": (1, ["core_cases_computed", "forward_matches_oracle"]),
    "grad_kernel_from_first_channel": (1, ["core_cases_computed", "backward_matches_autograd"]),
    "no_validation": (1, ["forward_rejects_ill_posed_input"]),
    "computes_nothing": (3, []),
    "wrong_behind_narrow_limits": (1, ["core_cases_computed"]),
    "flipped_taps": (1, ["core_cases_computed", "forward_matches_oracle"]),
    "taps_major_kernel_channels": (1, ["core_cases_computed", "forward_matches_oracle"]),
    "same_padding_like_tensorflow": (1, ["core_cases_computed"]),  # random draws differ only at even sizes
    "output_size_floor_divided": (1, ["core_cases_computed", "forward_matches_oracle"]),
    "interleaved_groups_and_flipped_taps": (1, ["core_cases_computed", "forward_matches_oracle"]),
    "grad_kernel_from_last_channel": (1, ["core_cases_computed", "backward_matches_autograd"]),
    "two_backward_slips": (1, ["core_cases_computed", "backward_matches_autograd"]),
    "raises_on_dilation": (1, ["forward_matches_oracle"]),
    "exits_early": (1, ["core_cases_computed"]),
    "hangs": (1, ["core_cases_computed"]),
}

# name -> the slips of ``diagnosis.SLIPS`` the diagnosis must name for it (every one, and no other).
NAMED_SLIPS = {
    "wrong_group_rule": ["interleaved groups"],
    "kernel_taps_transposed": ["transposed taps"],
    "flipped_taps": ["flipped taps"],
    "taps_major_kernel_channels": ["taps-major kernel channels"],
    "same_padding_like_tensorflow": ["SAME padding on the other side"],
    "output_size_floor_divided": ["floor-divided output size"],
    "stride_ignored_in_backward": ["stride ignored in grad_x"],
    "grad_kernel_from_first_channel": ["grad_kernel from the first channel"],
    "grad_kernel_from_last_channel": ["grad_kernel from the last channel"],
    "interleaved_groups_and_flipped_taps": ["interleaved groups", "flipped taps"],
    "two_backward_slips": ["stride ignored in grad_x", "grad_kernel from the first channel"],
}
