"""Edges of the input space: NaN and Inf values, and far corners of the geometry (wide kernels, large strides
and paddings, dilation far beyond the input)."""
import numpy as np
from hypothesis import strategies as st

from involution.conformance.adapters import torch_oracle
from involution.conformance.diagnosis import assert_matches_oracle
from involution.conformance.limits import DTYPES
from involution.conformance.strategies import cases, extreme_geometries, geometries
from involution.conformance.tolerances import assert_within, bound, forward_terms, magnitudes
from involution.reference.op import tap_slices

NONFINITE = (np.nan, np.inf, -np.inf)


def padded_taps(geometry) -> np.ndarray:
    """Boolean ``(Kh, Kw, Ho, Wo)``: where tap ``(u, v)`` of output ``(i, j)`` reads the zero padding."""
    padded = np.ones((geometry.kernel_h, geometry.kernel_w, geometry.out_h, geometry.out_w), dtype=bool)
    for u in range(geometry.kernel_h):
        for v in range(geometry.kernel_w):
            (rows, columns), _ = tap_slices(geometry, u, v)
            padded[u, v, rows, columns] = False
    return padded


def inject_nonfinite(data, case, kernel_allowed=None):
    """Copies of ``case.x`` and ``case.kernel`` with 0-2 NaN/Inf values drawn into each (into the kernel only
    where ``kernel_allowed`` (B, G, Kh, Kw, Ho, Wo) is true, if given), and often a tap whose weights are all zero
    reading a NaN. Every injection is a labelled draw, so a failure shows what was injected."""
    geometry, x, kernel = case.geometry, case.x.copy(), case.kernel.copy()
    for name, array in (("x", x), ("kernel", kernel)):
        places = np.argwhere(np.ones(array.shape, bool) if name == "x" or kernel_allowed is None else kernel_allowed)
        count = data.draw(st.integers(0, min(2, len(places))), label=f"non-finite values in {name}")
        for _ in range(count):
            index = tuple(int(i) for i in places[data.draw(st.integers(0, len(places) - 1))])
            array[index] = data.draw(st.sampled_from(NONFINITE), label=f"{name}{list(index)}")
    if data.draw(st.booleans(), label="a tap with all weights zero, reading a NaN"):
        b, group = data.draw(st.integers(0, geometry.batch - 1)), data.draw(st.integers(0, geometry.groups - 1))
        u, v = data.draw(st.integers(0, geometry.kernel_h - 1)), data.draw(st.integers(0, geometry.kernel_w - 1))
        kernel[:, :, u, v] = 0  # everywhere: catches skipping per tap, per group or per weight
        _, (rows, columns) = tap_slices(geometry, u, v)
        inside = [(row, column) for row in range(geometry.height)[rows] for column in range(geometry.width)[columns]]
        if inside:  # else the tap reads only padding
            row, column = data.draw(st.sampled_from(inside), label=f"NaN read by zero tap {(u, v)}")
            channel = group * geometry.group_channels + data.draw(st.integers(0, geometry.group_channels - 1))
            x[b, channel, row, column] = np.nan
    return x, kernel


def assert_nonfinite_matches_oracle(prove, case, x, kernel, what: str) -> None:
    """The forward on ``x``, ``kernel`` (with NaN/Inf) equals the oracle: non-finite where and as it is, finite
    values within the bound of the finite parts."""
    geometry = case.geometry
    out = prove.forward(x, kernel, *geometry.hyper_parameters)
    expected = torch_oracle.involution2d(x.astype(np.float64), kernel.astype(np.float64), *geometry.hyper_parameters)
    finite_x, finite_kernel = (np.where(np.isfinite(a), a, 0) for a in (x, kernel))
    tolerance = bound(forward_terms(geometry), case.dtype, magnitudes(finite_x, finite_kernel, geometry))
    assert_within(out, expected, tolerance, what, case)


def test_nonfinite_follows_definition(impl, prove):
    """NaN and Inf in ``x`` and ``kernel`` propagate as the definition says: a NaN in ``x`` reaches exactly the
    outputs whose windows hold it, and a tap whose weights are all zero still multiplies what it reads
    (``0 * NaN = NaN``: skipping zero taps is wrong). Infinite weights are drawn only on taps that read ``x``:
    what a weight on a padded tap gives is a policy (:func:`test_padded_inf_times_zero_is_nan`, strict tier)."""
    def check(data):
        case = data.draw(cases(impl.limits, geometry_strategy=geometries(impl.limits, padded=True)),
                         label="case (padding >= 1)")
        inside = np.broadcast_to(~padded_taps(case.geometry), case.geometry.kernel_shape)
        x, kernel = inject_nonfinite(data, case, kernel_allowed=inside)
        assert_nonfinite_matches_oracle(prove, case, x, kernel, "forward with NaN/Inf vs oracle")

    prove(check)


def test_padded_inf_times_zero_is_nan(impl, prove):
    """Strict tier (docs/policy.md): an infinite weight on a tap that reads the zero padding gives ``inf * 0 = NaN``
    at that output, as ``unfold`` and ``conv2d`` do. A bounds-checked gather that skips padded taps (the paper's
    CUDA kernel, most C++ ports) is correct for every finite input, and fails only this."""
    def check(data):
        case = data.draw(cases(impl.limits, geometry_strategy=geometries(impl.limits, padded=True)),
                         label="case (padding >= 1)")
        geometry = case.geometry
        x, kernel = inject_nonfinite(data, case)
        b, group = data.draw(st.integers(0, geometry.batch - 1)), data.draw(st.integers(0, geometry.groups - 1))
        # Tap (u, 0) at output row 0 reads padded row -ph (< 0): padding. Likewise (0, v) at column 0.
        if data.draw(st.booleans(), label="padded tap along the height (else the width)"):
            index = (b, group, 0, data.draw(st.integers(0, geometry.kernel_w - 1)), 0,
                     data.draw(st.integers(0, geometry.out_w - 1)))
        else:
            index = (b, group, data.draw(st.integers(0, geometry.kernel_h - 1)), 0,
                     data.draw(st.integers(0, geometry.out_h - 1)), 0)
        kernel[index] = data.draw(st.sampled_from((np.inf, -np.inf)), label=f"infinite weight on padded tap {index}")
        assert_nonfinite_matches_oracle(prove, case, x, kernel,
                                        f"forward with an infinite weight on padded tap {index} vs oracle")

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
        assert_matches_oracle(results, x, kernel, geometry, case, None if impl.backward is None else grad_out)

    # Not shrunk: the draws are small, and a compiled backend may compile a kernel per width shrinking tries.
    prove(check, shrink=False)
