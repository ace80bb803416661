"""Hypothesis strategies for the conformance suite: every shape, hyper-parameter, dtype and memory layout it draws.

Tests draw with labels (``data.draw(cases(limits), label="case")``) so a failing example prints as
``Draw 1 (case): Case(x (2, 4, 7, 5) float32 sliced, kernel (2, 2, 3, 1, 4, 5), stride=(2, 1), ...)``;
the array values are reproducible from the printed ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from involution.conformance.layouts import LAYOUTS, as_layout  # noqa: F401 (LAYOUTS: the tests draw from it)
from involution.conformance.limits import Limits, excluded_by, same_padding, work
from involution.spec import Geometry, check_geometry, output_size



def group_channels(maximum: int) -> st.SearchStrategy[int]:
    """Channels per group up to ``maximum``: as often 1-4 (where the group rule shows in few channels) as 5 or
    more (up to RedNet's 16: the channel-vector CPU kernels run from 5, see ``fast.cpu.choose_version``)."""
    narrow = st.integers(1, min(4, maximum))
    return narrow if maximum <= 4 else st.one_of(narrow, st.integers(5, maximum))


@st.composite
def geometries(draw, limits: Limits = Limits(), max_elements: int | None = None, padded: bool = False) -> Geometry:
    """A valid involution geometry: odd and unequal H, W, H smaller than the kernel, 1x1 sizes, all groups.

    ``max_elements`` (optional) additionally caps ``x.size + kernel.size``; ``padded`` draws padding >= 1 on both
    axes (so that some taps read the zero padding).
    """
    square = limits.square_only or draw(st.booleans())
    kernel_h = draw(st.integers(1, limits.max_kernel))
    kernel_w = kernel_h if square else draw(st.integers(1, limits.max_kernel))
    stride_h = draw(st.integers(1, limits.max_stride))
    stride_w = stride_h if square else draw(st.integers(1, limits.max_stride))
    dilation_h = draw(st.integers(1, limits.max_dilation))
    dilation_w = dilation_h if square else draw(st.integers(1, limits.max_dilation))
    modes = ["any"] if padded else ["same", "zero", "any"]
    padding_mode = "same" if limits.same_padding_only else draw(st.sampled_from(modes))
    paddings = []
    for kernel, dilation in ((kernel_h, dilation_h), (kernel_w, dilation_w)):
        if padding_mode == "same":
            paddings.append(same_padding(kernel, dilation))
        elif padding_mode == "zero":
            paddings.append(0)
        else:
            paddings.append(draw(st.integers(int(padded), dilation * (kernel - 1) // 2 + 1)))
    if square and padding_mode == "any":
        paddings[1] = paddings[0]
    # The smallest input with an output of at least 1 (smaller than the kernel when padded).
    min_h = max(1, dilation_h * (kernel_h - 1) + 1 - 2 * paddings[0])
    min_w = max(1, dilation_w * (kernel_w - 1) + 1 - 2 * paddings[1])
    height = draw(st.integers(min_h, min_h + limits.max_extent))
    width = draw(st.integers(min_w, min_w + limits.max_extent))
    # G and C // G drawn separately, so that 1 < G < C (where group rules differ) is common.
    groups = draw(st.integers(1, limits.max_groups))
    channels = groups * draw(group_channels(limits.max_group_channels))
    batch = draw(st.integers(1, limits.max_batch))
    stride, padding, dilation = (stride_h, stride_w), tuple(paddings), (dilation_h, dilation_w)
    out_h = output_size(height, kernel_h, stride_h, paddings[0], dilation_h)
    out_w = output_size(width, kernel_w, stride_w, paddings[1], dilation_w)
    geometry = check_geometry((batch, channels, height, width), (batch, groups, kernel_h, kernel_w, out_h, out_w),
                              stride, padding, dilation)
    assume(work(geometry) <= limits.max_work)
    if max_elements is not None:
        assume(batch * channels * height * width + int(np.prod(geometry.kernel_shape)) <= max_elements)
    return geometry


@st.composite
def extreme_geometries(draw, declared: dict) -> Geometry:
    """Far corners of the geometry space, small in work: strides and paddings up to 64, kernels up to 128 wide,
    dilation up to 100 (far beyond the input, with padding to keep an output), 1-pixel inputs.

    At most 128 output elements. ``declared`` limits (an implementation's ``CONFORMANCE_LIMITS``) are respected
    with ``assume``, except ``max_work``, a cost cap that wide kernels exceed by design.
    """
    family = draw(st.sampled_from(["wide_kernel", "large_stride", "large_padding", "huge_dilation"]))
    kernel, stride, dilation, padding = [1, 1], [1, 1], [1, 1], [0, 0]
    axis = draw(st.integers(0, 1))  # the axis that goes far; the other stays ordinary
    if family == "wide_kernel":
        kernel[axis] = draw(st.integers(101, 128))
        padding[axis] = draw(st.sampled_from([0, (kernel[axis] - 1) // 2, kernel[axis]]))
        stride[axis] = draw(st.sampled_from([1, 8, 64]))
    elif family == "large_stride":
        kernel[axis], stride[axis] = draw(st.integers(1, 3)), draw(st.integers(8, 64))
    elif family == "large_padding":
        kernel[axis], padding[axis] = draw(st.integers(1, 3)), draw(st.integers(8, 64))
        stride[axis] = draw(st.integers(1, 64))
    else:
        kernel[axis], dilation[axis] = draw(st.integers(2, 3)), draw(st.integers(20, 100))
        padding[axis] = dilation[axis] * (kernel[axis] - 1) // 2 + draw(st.integers(0, 2))
    other = 1 - axis
    kernel[other] = draw(st.integers(1, 3))
    padding[other] = draw(st.integers(0, kernel[other] // 2))
    sizes = []
    for k, s, p, d in zip(kernel, stride, padding, dilation):
        smallest = max(1, d * (k - 1) + 1 - 2 * p)
        sizes.append(draw(st.integers(smallest, smallest + draw(st.sampled_from([0, 2, s + 1])))))
    groups = draw(st.integers(1, 2))
    channels = groups * draw(st.integers(1, 2))
    batch = draw(st.integers(1, 2))
    out_h, out_w = (output_size(n, k, s, p, d) for n, k, s, p, d in zip(sizes, kernel, stride, padding, dilation))
    geometry = check_geometry((batch, channels, *sizes), (batch, groups, *kernel, out_h, out_w), tuple(stride),
                              tuple(padding), tuple(dilation))
    assume(geometry.batch * geometry.channels * out_h * out_w <= 128)  # the CUDA simulator runs a thread each
    assume(not excluded_by({k: v for k, v in declared.items() if k != "max_work"}, geometry, "float64"))
    return geometry


@dataclass(frozen=True)
class Case:
    """One drawn call: ``involution2d(x, kernel, stride, padding, dilation)``; prints shapes, not values."""

    geometry: Geometry
    dtype: str
    seed: int
    layout: str = "contiguous"
    x: np.ndarray = field(repr=False, compare=False, default=None)
    kernel: np.ndarray = field(repr=False, compare=False, default=None)

    @property
    def params(self) -> tuple:
        """``(stride, padding, dilation)`` as pairs."""
        g = self.geometry
        return g.stride, g.padding, g.dilation

    def __repr__(self) -> str:
        g = self.geometry
        return (f"Case(x {g.x_shape} {self.dtype} {self.layout}, kernel {g.kernel_shape} (B, G, Kh, Kw, Ho, Wo), "
                f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, seed={self.seed})")

    def _repr_pretty_(self, printer, cycle) -> None:
        """Hypothesis prints draws with this (its printer would otherwise list every dataclass field)."""
        printer.text(repr(self))


def random_arrays(geometry: Geometry, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal ``x`` and ``kernel`` for ``geometry``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(geometry.x_shape).astype(dtype)
    kernel = rng.standard_normal(geometry.kernel_shape).astype(dtype)
    return x, kernel


@st.composite
def cases(draw, limits: Limits = Limits(), dtypes=None, layouts=("contiguous",), max_elements=None,
          geometry_strategy=None) -> Case:
    """A :class:`Case` with random values: a geometry, a dtype, a seed and a memory layout for both arrays.

    The geometry comes from ``geometry_strategy`` if given, else from :func:`geometries` with ``limits``.
    """
    geometry = draw(geometries(limits, max_elements) if geometry_strategy is None else geometry_strategy)
    dtype = draw(st.sampled_from(dtypes or limits.dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(layouts))
    x, kernel = random_arrays(geometry, dtype, seed)
    return Case(geometry, dtype, seed, layout, as_layout(x, layout), as_layout(kernel, layout))


def scalars() -> st.SearchStrategy[float]:
    """Coefficients for linearity checks: small, signed, zero included."""
    return st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, -3.0, 0.25])
