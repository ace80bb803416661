"""The memory layouts the suite draws for input arrays: every layout holds the same values.

No hypothesis here: the worker process rebuilds the layouts of the arrays it is sent (see ``channel``).
"""
from __future__ import annotations

import numpy as np

# How an input array is laid out in memory; every layout holds the same values.
LAYOUTS = ("contiguous", "sliced", "reversed", "channels_last", "fortran")


def as_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The values of ``array`` in the memory ``layout`` (one of :data:`LAYOUTS`)."""
    if layout == "contiguous":
        return np.ascontiguousarray(array)
    if layout == "sliced":
        buffer = np.full(array.shape[:-1] + (2 * array.shape[-1],), np.nan, dtype=array.dtype)
        buffer[..., ::2] = array
        return buffer[..., ::2]
    if layout == "reversed":
        return np.flip(np.flip(array).copy())
    if layout == "channels_last":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(array, 1, -1)), -1, 1)
    if layout == "fortran":
        return np.asfortranarray(array)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def layout_of(array: np.ndarray) -> str:
    """The name in :data:`LAYOUTS` whose :func:`as_layout` gives ``array``'s strides ("contiguous" if none does, or
    if ``array`` is C-contiguous): what the channel sends, so that the receiver rebuilds the same layout."""
    if array.flags.c_contiguous or array.ndim < 2:
        return "contiguous"
    for layout in LAYOUTS[1:]:
        try:
            if as_layout(np.zeros(array.shape, array.dtype), layout).strides == array.strides:
                return layout
        except (ValueError, TypeError):  # a layout this dtype or shape cannot take (NaN fill of integers)
            continue
    return "contiguous"
