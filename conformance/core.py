"""The core cases: calls every implementation must compute, whatever limits it declares (``test_op_core.py``).

Stride 1 and 2, G = 1 and G > 1, 1 to 16 channels per group, K = 1, 3 and 7, odd and even sizes, H != W, zero and
"same" padding, float32 and float64.
"""
from __future__ import annotations

import numpy as np

from involution.conformance.limits import excluded_by
from involution.conformance.strategies import random_arrays
from involution.spec import check_geometry, output_size

# (B, C, G, H, W, K, stride, padding, dtype); padding "same" is (K - 1) // 2.
CORE = [
    (2, 4, 1, 7, 9, 3, 1, 1, "float64"),
    (2, 4, 2, 7, 9, 3, 2, 1, "float32"),
    (1, 4, 2, 8, 7, 3, 1, 0, "float64"),
    (2, 4, 2, 5, 6, 1, 1, 0, "float64"),
    (2, 4, 4, 5, 8, 1, 2, 0, "float32"),
    (1, 3, 3, 7, 8, 7, 1, 3, "float64"),
    (1, 4, 2, 11, 10, 7, 2, 0, "float32"),
    (1, 2, 1, 9, 7, 7, 2, 3, "float64"),
    # 5 and 16 channels per group (every RedNet layer has 16): the channel-vector CPU kernels run here.
    (2, 10, 2, 6, 9, 3, 1, 1, "float32"),
    (1, 16, 1, 9, 8, 7, 1, 3, "float64"),
    # Even sizes at stride 2: the output needs an odd total padding (1 here), which TensorFlow's SAME puts at the
    # bottom/right, where the definition pads `padding` rows on both sides; the odd sizes above cannot tell them apart.
    (2, 6, 2, 8, 6, 3, 2, 1, "float32"),
]


def core_case(entry):
    """``(geometry, dtype, x, kernel, grad_out)`` of one :data:`CORE` entry, values reproducible from its index."""
    batch, channels, groups, height, width, k, stride, padding, dtype = entry
    out_h, out_w = output_size(height, k, stride, padding, 1), output_size(width, k, stride, padding, 1)
    geometry = check_geometry((batch, channels, height, width), (batch, groups, k, k, out_h, out_w), stride,
                              padding, 1)
    x, kernel = random_arrays(geometry, dtype, CORE.index(entry))
    grad_out = np.random.default_rng(CORE.index(entry)).standard_normal(geometry.out_shape).astype(dtype)
    return geometry, dtype, x, kernel, grad_out


def describe(entry) -> str:
    """``B=2 C=4 G=1 7x9 K=3 stride=1 padding=1 float64``."""
    batch, channels, groups, height, width, k, stride, padding, dtype = entry
    return f"B={batch} C={channels} G={groups} {height}x{width} K={k} stride={stride} padding={padding} {dtype}"


def excluded_core_cases(declared: dict) -> list[str]:
    """The core cases that ``declared`` limits (an implementation's ``CONFORMANCE_LIMITS``) exclude, described."""
    excluded = []
    for entry in CORE:
        geometry, dtype, *_ = core_case(entry)
        if excluded_by(declared, geometry, dtype):
            excluded.append(describe(entry))
    return excluded
