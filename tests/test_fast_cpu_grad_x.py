"""grad_x_v8 (the input gradient with channel vectors) against the NumPy reference: the geometries its index plan
distinguishes (tap progressions per stride phase, blocks at the border, phases narrower than a block, partial
channel vectors), non-finite values, thread counts, its scratch, bounds checks. test_fast_cpu.py runs v8 on the
shared cases too."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

from involution.fast import cpu, cpu_blocks, cpu_grad_x, runtime  # noqa: E402
from involution.reference import involution2d_backward  # noqa: E402

from cases import (CASES, LARGE_CASES, SIMD_BOUNDSCHECK_PROBE, assert_backward_matches, case_id,  # noqa: E402
                   geometry_of, make_case)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (B, C, G, H, W, Kh, Kw, stride, padding, dilation). Channels per group 16 (one vector), 8 (half a float32
# vector), 24 and 40 (a full block and a partial one); input rows of 3 (narrower than a block), 4, 5 and 40 (blocks
# inside and at both borders); strides 1-3 with dilations 1-2, so that the tap steps sh // gcd(sh, dh) are 1, 2 and
# 3 and some stride phases have no tap; padding 0, larger than the kernel's reach, and different per side.
V8_CASES = [
    (2, 16, 1, 9, 3, 3, 3, (1, 1), (1, 1), (1, 1)),  # rows of 3: one position at a time
    (1, 48, 2, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1)),  # 24 per group: a vector and a partial one
    (1, 40, 1, 7, 5, 5, 5, (1, 1), (2, 2), (1, 1)),  # 40 per group, overlapping last block
    (2, 32, 1, 40, 40, 3, 7, (1, 2), (1, 3), (2, 1)),  # interior blocks, stride-2 columns (row scratch)
    (1, 64, 4, 15, 15, 7, 7, (2, 2), (3, 3), (1, 1)),  # RedNet's stride-2 layers in small
    (1, 16, 1, 13, 17, 3, 5, (3, 3), (2, 1), (2, 1)),  # stride 3: phases with and without taps
    (1, 16, 2, 13, 17, 3, 5, (2, 3), (7, 9), (2, 2)),  # padding past the reach; dilation = stride: every tap phase 0
    (1, 32, 2, 11, 23, 4, 3, (3, 2), (0, 0), (2, 3)),  # no padding: last rows and columns read by no tap
    (2, 16, 2, 16, 16, 3, 3, (2, 2), (0, 5), (1, 1)),  # padding on one axis only, even kernel rows
    (1, 64, 8, 7, 7, 7, 7, (1, 1), (3, 3), (1, 1)),  # RedNet's 7x7: every block at a border
]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", V8_CASES, ids=[case_id(case) for case in V8_CASES])
def test_matches_reference(case, dtype):
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    grads = cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=8)
    assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation,
                            f"v8, {np.dtype(dtype)}, case {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_non_finite_values_propagate_like_the_reference(dtype):
    """An infinite weight on a tap reading the zero padding reaches no input (no NaN made where the border blocks
    give weight 0); one on a tap inside the image, and NaN or inf in grad_out, reach exactly the inputs the reference
    gives them to."""
    case = (1, 16, 1, 9, 11, 3, 3, (1, 1), (1, 1), (1, 1))
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    kernel[0, 0, 0, 0, 0, 4] = np.inf  # output (0, 4), tap (0, 0) reads padded row -1: no input
    kernel[0, 0, 2, 2, 8, 10] = np.inf  # output (8, 10), tap (2, 2) reads row 9, column 11: the padding
    kernel[0, 0, 1, 2, 3, 10] = -np.inf  # output (3, 10), tap (1, 2) reads padded column 11: no input
    kernel[0, 0, 1, 1, 4, 0] = np.inf  # tap (1, 1) of output (4, 0) reads x[4, 0]: inf or NaN there
    kernel[0, 0, 1, 0, 3, 10] = np.inf  # tap (1, 0) of the last output column reads x[3, 9]; input column 10's
    # border block sees this tap's column 11, outside: weight 0 there, not this inf
    grad_out[0, 5, 0, 0] = np.nan  # the corner: its window holds inputs of a border block
    grad_out[0, 9, 8, 10] = np.inf
    with np.errstate(invalid="ignore"):
        expected = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)[0]
    got = cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=8)[0]
    assert np.isnan(expected).any() and np.isinf(expected).any(), "the case should plant NaN and inf in grad_x"
    for name, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        assert np.array_equal(mask(got), mask(expected)), (
            f"{name} positions differ: v8 {np.argwhere(mask(got)).tolist()} reference "
            f"{np.argwhere(mask(expected)).tolist()}")
    # elsewhere, the rounding bound of 9 terms: 9 * eps * sum_taps |kernel * grad_out|
    magnitude = involution2d_backward(np.abs(np.nan_to_num(grad_out, posinf=0)), np.abs(x),
                                      np.abs(np.nan_to_num(kernel, posinf=0, neginf=0)), stride, padding, dilation)[0]
    finite = np.isfinite(expected)
    error = np.abs(got[finite] - expected[finite])
    bound = 9 * np.finfo(dtype).eps * magnitude[finite]
    assert (error <= bound).all(), f"finite gradients off by up to {(error / bound).max():.2f} times the bound"


def test_bitwise_identical_for_any_thread_count(monkeypatch):
    """The band of input rows per unit depends on the thread count; each element's sum does not."""
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)  # the thread counts asked for, even when busy
    numba = pytest.importorskip("numba")
    case = (2, 32, 2, 30, 21, 7, 7, (1, 2), (3, 3), (1, 1))
    x, kernel, grad_out, stride, padding, dilation = make_case(case, np.float32, seed=5)
    geometry = geometry_of(case)
    counts = sorted({1, numba.config.NUMBA_NUM_THREADS})
    bands = [cpu_grad_x.input_rows_per_unit(2, 2, 16, 16, geometry.height, geometry.width, geometry.out_h, geometry.out_w, 7, 1,
                                 1, workers)[0] for workers in counts]
    assert len(counts) == 1 or bands[0] != bands[-1], f"the case should split rows by thread count: bands {bands}"

    def grad_x():
        return cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=8)[0]

    threads = numba.get_num_threads()
    first = grad_x()
    results = {}
    try:
        for count in counts:
            numba.set_num_threads(count)
            results[count] = grad_x()
    finally:
        numba.set_num_threads(threads)
    for count, result in results.items():
        assert np.array_equal(first, result), f"grad_x differs between {threads} threads and {count}"
    assert np.array_equal(first, grad_x()), "grad_x differs between two runs"


def test_scratch_per_thread_stays_within_the_budget():
    """``band_v8`` keeps a thread's slot (the grad_out rows of a band, channels-last, and one input row) within
    SCRATCH_ELEMENTS plus the row on RedNet's layers, and ``scratch_elements`` reports one slot per thread."""
    for channels, size, stride, kernel in ((32, 112, 1, 3), (64, 56, 1, 7), (128, 56, 2, 7), (512, 7, 1, 7)):
        case = (8, channels, channels // 16, size, size, kernel, kernel, (stride,) * 2, ((kernel - 1) // 2,) * 2,
                (1, 1))
        geometry = geometry_of(case)
        one = cpu.scratch_elements("grad_x", 8, geometry, workers=1)
        assert one <= cpu_blocks.SCRATCH_ELEMENTS + size * 16, f"{one} scratch elements per thread, case {case}"
        assert cpu.scratch_elements("grad_x", 8, geometry, workers=3) == 3 * one


BOUNDSCHECK_SCRIPT = textwrap.dedent("""
    import sys
    import numba, numpy as np
    from involution.fast import cpu_grad_x, simd
    sys.path.insert(0, "tests")
    from cases import backward_loops, make_case
""") + SIMD_BOUNDSCHECK_PROBE + textwrap.dedent("""
    assert numba.get_num_threads() == 1, "an IndexError on a second thread would be dropped"
    for case in {cases!r}:
        x, kernel, grad_out, stride, padding, dilation = make_case(case)
        expected = backward_loops(grad_out, x, kernel, stride, padding, dilation)[0]
        got = np.empty_like(x)
        # the kernel itself: the dispatcher would refuse the large cases (scratch_fits_v5), the index plan must not
        cpu_grad_x.grad_x_v8(grad_out, kernel, got, *stride, *padding, *dilation)
        if not np.allclose(got, expected, rtol=1e-10, atol=1e-10):
            raise SystemExit(f"v8 differs from the definition, case {{case}}")
    print("ok")
""")


@pytest.mark.slow
def test_never_reads_out_of_bounds(request, tmp_path):
    """grad_x_v8 compiled fresh with numba's bounds checks (covering its vector loads and stores) on one thread, over
    the shared, v8 and large-hyper-parameter cases. Minutes of compiling: run with ``-m slow``."""
    if "slow" not in (request.config.option.markexpr or "") and os.environ.get("INVOLUTION_SLOW_TESTS") != "1":
        pytest.skip("fresh bounds-checked compile: run with -m slow or INVOLUTION_SLOW_TESTS=1")
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_NUM_THREADS": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    script = BOUNDSCHECK_SCRIPT.format(cases=CASES + V8_CASES + LARGE_CASES)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1800,
                          cwd=ROOT)
    assert done.returncode == 0 and done.stdout.split() == ["ok"], (
        f"stdout {done.stdout!r}\nstderr {done.stderr[-3000:]}")
