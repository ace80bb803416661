"""Weight initialisation: mmcls' variances (Kaiming fan-out for convolutions, std 0.01 for the classifier).

Draws are float32 uniform (the fastest generator path, so RedNet-152 builds in well under a second) with the
variance of the normal distributions mmcls uses; the model's dtype is applied afterwards.
"""
from __future__ import annotations

import numpy as np

from involution.spec import FLOAT_DTYPES


def uniform_with_std(shape, std: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Array of ``shape`` uniform on ``[-std*sqrt(3), std*sqrt(3))`` (standard deviation ``std``), in ``dtype``."""
    bound = np.float32(std * np.sqrt(3.0))
    values = rng.random(shape, dtype=np.float32)
    values *= 2 * bound
    values -= bound
    return values.astype(dtype, copy=False)


def kaiming_fan_out(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    """Convolution weight ``(O, I, kh, kw)`` with variance ``2 / (O * kh * kw)`` (mmcls' Kaiming, fan-out, ReLU)."""
    out_channels, _, kernel_h, kernel_w = shape
    return uniform_with_std(shape, np.sqrt(2.0 / (out_channels * kernel_h * kernel_w)), rng, dtype)


def default_rng(rng) -> np.random.Generator:
    """``rng`` itself, or a generator seeded with 0 when None (layers built alone are reproducible)."""
    return np.random.default_rng(0) if rng is None else rng


def parameter_dtype(dtype) -> np.dtype:
    """``dtype`` as a NumPy dtype if it is float32 or float64 (the NumPy backends' dtypes, docs/policy.md);
    a ``TypeError`` naming it otherwise (float16, integers, anything NumPy does not understand)."""
    try:
        checked = np.dtype(dtype) if dtype is not None else None  # np.dtype(None) would be float64
    except TypeError:
        checked = None
    if checked is None or checked not in FLOAT_DTYPES:
        shown = repr(dtype) if checked is None else checked.name
        raise TypeError(f"dtype must be float32 or float64, got {shown}")
    return checked
