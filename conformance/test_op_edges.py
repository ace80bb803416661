"""Edges of the input space: NaN and Inf values, and far corners of the geometry (wide kernels, large strides
and paddings, dilation far beyond the input)."""
import numpy as np
from hypothesis import strategies as st

from involution.conformance.adapters import torch_oracle
from involution.conformance.limits import DTYPES
from involution.conformance.strategies import cases, extreme_geometries, geometries
from involution.conformance.tolerances import assert_matches_reference, assert_within, bound, forward_terms, magnitudes

NONFINITE = (np.nan, np.inf, -np.inf)


def test_nonfinite_follows_definition(impl, prove):
    """NaN and Inf in ``x`` and ``kernel`` propagate as the definition says: an infinite weight on a tap that reads
    the zero padding gives ``inf * 0 = NaN`` (as ``unfold`` and ``conv2d`` do), not 0 (a skipped tap), and a tap
    whose weights are all zero still multiplies what it reads (``0 * NaN = NaN``: skipping zero taps is wrong)."""
    def check(data):
        case = data.draw(cases(impl.limits, geometry_strategy=geometries(impl.limits, padded=True)),
                         label="case (padding >= 1)")
        geometry, dtype, x, kernel = case.geometry, case.dtype, case.x.copy(), case.kernel.copy()
        for name, array in (("x", x), ("kernel", kernel)):
            count = data.draw(st.integers(0, 2), label=f"non-finite values in {name}")
            for _ in range(count):
                index = tuple(data.draw(st.integers(0, size - 1)) for size in array.shape)
                array[index] = data.draw(st.sampled_from(NONFINITE), label=f"{name}{list(index)}")
        b, group = data.draw(st.integers(0, geometry.batch - 1)), data.draw(st.integers(0, geometry.groups - 1))
        if data.draw(st.booleans(), label="a tap with all weights zero, reading a NaN"):
            (sh, sw), (ph, pw), (dh, dw) = geometry.hyper_parameters
            u, v = data.draw(st.integers(0, geometry.kernel_h - 1)), data.draw(st.integers(0, geometry.kernel_w - 1))
            kernel[:, :, u, v] = 0  # everywhere: catches skipping per tap, per group or per weight
            inside = [(i * sh + u * dh - ph, j * sw + v * dw - pw) for i in range(geometry.out_h)
                      for j in range(geometry.out_w)
                      if 0 <= i * sh + u * dh - ph < geometry.height and 0 <= j * sw + v * dw - pw < geometry.width]
            if inside:  # else the tap reads only padding
                row, column = data.draw(st.sampled_from(inside), label=f"NaN read by zero tap {(u, v)}")
                channel = group * geometry.group_channels + data.draw(st.integers(0, geometry.group_channels - 1))
                x[b, channel, row, column] = np.nan
        # Tap (u, 0) at output row 0 reads padded row -ph (< 0): padding. Likewise (0, v) at column 0.
        if data.draw(st.booleans(), label="padded tap along the height (else the width)"):
            index = (b, group, 0, data.draw(st.integers(0, geometry.kernel_w - 1)), 0,
                     data.draw(st.integers(0, geometry.out_w - 1)))
        else:
            index = (b, group, data.draw(st.integers(0, geometry.kernel_h - 1)), 0,
                     data.draw(st.integers(0, geometry.out_h - 1)), 0)
        kernel[index] = data.draw(st.sampled_from((np.inf, -np.inf)), label=f"infinite weight on padded tap {index}")
        out = prove.forward(x, kernel, *geometry.hyper_parameters)
        expected = torch_oracle.involution2d(x.astype(np.float64), kernel.astype(np.float64),
                                             *geometry.hyper_parameters)
        finite_x, finite_kernel = (np.where(np.isfinite(a), a, 0) for a in (x, kernel))
        tolerance = bound(forward_terms(geometry), dtype, magnitudes(finite_x, finite_kernel, geometry))
        assert_within(out, expected, tolerance, "forward with NaN/Inf vs oracle", case)

    prove(check)


def test_extreme_geometry_matches_oracle(impl, prove):
    """Kernels 101..128 wide, strides and paddings up to 64, dilation up to 100 on tiny inputs: forward and
    backward equal the oracle and autograd."""
    def check(data):
        case = data.draw(cases(dtypes=impl.declared.get("dtypes", DTYPES),
                               geometry_strategy=extreme_geometries(impl.declared)), label="case")
        geometry, dtype, x, kernel = case.geometry, case.dtype, case.x, case.kernel
        grad_out = np.random.default_rng(case.seed + 1).standard_normal(geometry.out_shape).astype(dtype)
        params = geometry.hyper_parameters
        results = {"out": prove.forward(x, kernel, *params)}
        if impl.backward is not None:
            results["grad_x"], results["grad_kernel"] = prove.backward(grad_out, x, kernel, *params)
        assert_matches_reference(results, x, kernel, geometry, case, None if impl.backward is None else grad_out,
                                 reference=(torch_oracle.involution2d, torch_oracle.involution2d_backward))

    # Not shrunk: the draws are small, and a compiled backend may compile a kernel per width shrinking tries.
    prove(check, shrink=False)
