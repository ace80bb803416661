"""A NumPy user's own involution with its own policies, correct where the op is defined.

It checks only what it must, with its own messages (the suite's strict tier asks for more), computes any
float or integer dtype in that dtype, answers an empty batch with an empty output and does not check
``grad_out``'s dtype. The suite's verdict for it is "conformant" (tests/test_conformance_meta.py):

    cd docs/examples && python -m involution conformance --impl lax_numpy
"""
import numpy as np


def _pair(value):
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(item, int) for item in pair):
        raise ValueError(f"bad hyper-parameter {value!r}")
    return pair


def _sizes(x, kernel, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or x.ndim != 4 or kernel.ndim != 6:
        raise ValueError("bad arguments")
    batch, channels, height, width = x.shape
    _, groups, kernel_h, kernel_w, out_h, out_w = kernel.shape
    expected = ((height + 2 * ph - dh * (kernel_h - 1) - 1) // sh + 1,
                (width + 2 * pw - dw * (kernel_w - 1) - 1) // sw + 1)
    if kernel.shape[0] != batch or channels % groups or (out_h, out_w) != expected or min(expected) < 1:
        raise ValueError("shapes do not fit")
    return (sh, sw), (ph, pw), (dh, dw), channels // groups


def _tap(x_padded, u, v, stride, dilation, out_h, out_w):
    (sh, sw), (dh, dw) = stride, dilation
    return x_padded[:, :, u * dh:u * dh + (out_h - 1) * sh + 1:sh, v * dw:v * dw + (out_w - 1) * sw + 1:sw]


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    """``out[b, c, i, j] = sum_{u, v} kernel[b, c // (C // G), u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``."""
    stride, (ph, pw), dilation, per_group = _sizes(x, kernel, stride, padding, dilation)
    out_h, out_w = kernel.shape[4:]
    x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    weights = np.repeat(kernel, per_group, axis=1)
    out = np.zeros((x.shape[0], x.shape[1], out_h, out_w), dtype=np.result_type(x, kernel))
    for u in range(kernel.shape[2]):
        for v in range(kernel.shape[3]):
            out += weights[:, :, u, v] * _tap(x_padded, u, v, stride, dilation, out_h, out_w)
    return out


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):
    """``(grad_x, grad_kernel)`` of ``sum(involution2d(x, kernel) * grad_out)``."""
    stride, (ph, pw), dilation, per_group = _sizes(x, kernel, stride, padding, dilation)
    batch, groups, kernel_h, kernel_w, out_h, out_w = kernel.shape
    if grad_out.shape != (x.shape[0], x.shape[1], out_h, out_w):
        raise ValueError("grad_out has the wrong shape")
    x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    grad_x_padded = np.zeros_like(x_padded, dtype=np.result_type(x, kernel))
    weights = np.repeat(kernel, per_group, axis=1)
    grad_kernel = np.zeros(kernel.shape, dtype=np.result_type(x, kernel))
    for u in range(kernel_h):
        for v in range(kernel_w):
            _tap(grad_x_padded, u, v, stride, dilation, out_h, out_w)[...] += weights[:, :, u, v] * grad_out
            products = grad_out * _tap(x_padded, u, v, stride, dilation, out_h, out_w)
            grad_kernel[:, :, u, v] = products.reshape(batch, groups, per_group, out_h, out_w).sum(axis=2)
    return grad_x_padded[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], grad_kernel
