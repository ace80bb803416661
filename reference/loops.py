"""The definition of involution, one scalar at a time: six nested loops, the slow and obviously correct yardstick.

Every other implementation in the project (the vectorised NumPy op, the numba kernels, the torch ops) is checked
against this function or against something checked against it.
"""
import numpy as np

from involution.spec import check_involution2d


def involution2d_loops(x, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``, ``g = c // (C // G)``.

    ``x_pad`` is ``x`` with ``padding`` zeros on each side, read here as ``0.0`` outside ``x``: a tap on the padding
    still multiplies its weight (so an infinite weight there gives ``inf * 0 = NaN``, as the formula says).

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W), float32 or float64
    kernel : ndarray, shape (B, G, Kh, Kw, Ho, Wo), dtype of ``x``
    stride, padding, dilation : int or (h, w) pair

    Returns
    -------
    out : ndarray, shape (B, C, Ho, Wo), float64 (each product and sum in float64, taps in row-major order)
    """
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation)
    (sh, sw), (ph, pw), (dh, dw) = geometry.hyper_parameters
    batch, channels, height, width = x.shape
    _, groups, kernel_h, kernel_w, out_h, out_w = kernel.shape
    out = np.zeros((batch, channels, out_h, out_w), dtype=np.float64)
    for b in range(batch):
        for c in range(channels):
            g = c // (channels // groups)
            for i in range(out_h):
                for j in range(out_w):
                    for u in range(kernel_h):
                        for v in range(kernel_w):
                            row, col = i * sh + u * dh - ph, j * sw + v * dw - pw
                            inside = 0 <= row < height and 0 <= col < width
                            x_pad = float(x[b, c, row, col]) if inside else 0.0
                            out[b, c, i, j] += float(kernel[b, g, u, v, i, j]) * x_pad
    return out
