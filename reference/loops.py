"""The op written as the formula, one scalar at a time: the slow, obviously-correct yardstick for tests."""
import numpy as np


def involution2d_loops(x, kernel, stride, padding, dilation):
    """``out[b,c,i,j] = sum_{u,v} kernel[b, c // (C//G), u, v, i, j] * x[b, c, i*sh+u*dh-ph, j*sw+v*dw-pw]``."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
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
                            if 0 <= row < height and 0 <= col < width:
                                out[b, c, i, j] += kernel[b, g, u, v, i, j] * x[b, c, row, col]
    return out
