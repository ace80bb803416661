"""Test cases shared by the op tests: case tuples to arrays, reference-matching assertions, error inputs."""
import numpy as np

from involution.conformance import tolerances
from involution.spec import check_geometry, output_size


def case_id(case):
    """Test id of a ``(B, C, G, H, W, Kh, Kw, stride, padding, dilation)`` case, e.g. ``B1C4G1H5W5K3x3s(1,1)...``."""
    return "B{}C{}G{}H{}W{}K{}x{}s{}p{}d{}".format(*case).replace(" ", "")


def geometry_of(case):
    """The validated :class:`~involution.spec.Geometry` of a ``(B, C, G, H, W, Kh, Kw, stride, padding,
    dilation)`` case (no arrays made)."""
    batch, channels, groups, height, width, kh, kw, stride, padding, dilation = case
    out_h, out_w = (output_size(n, k, s, p, d) for n, k, s, p, d in
                    zip((height, width), (kh, kw), stride, padding, dilation))
    return check_geometry((batch, channels, height, width), (batch, groups, kh, kw, out_h, out_w), stride, padding,
                          dilation)


def make_case(case, dtype=np.float64, seed=0):
    """``(x, kernel, grad_out, stride, padding, dilation)`` of ``case`` with standard normal values."""
    geometry = geometry_of(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(geometry.x_shape).astype(dtype)
    kernel = rng.standard_normal(geometry.kernel_shape).astype(dtype)
    grad_out = rng.standard_normal(geometry.out_shape).astype(dtype)
    return x, kernel, grad_out, geometry.stride, geometry.padding, geometry.dilation


def assert_forward_matches(out, x, kernel, stride, padding, dilation, context):
    """``out`` equals the float64 reference within the rounding bound of ``Kh*Kw`` terms in ``out.dtype``."""
    geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
    tolerances.assert_matches_reference({"out": out}, x, kernel, geometry, context)


def assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, context):
    """``(grad_x, grad_kernel)`` equal the float64 reference within their reductions' rounding bounds."""
    geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
    tolerances.assert_matches_reference(dict(zip(("grad_x", "grad_kernel"), grads)), x, kernel, geometry, context,
                                        grad_out)


def assert_matches_reference_on(case, dtype, forward, backward, context):
    """``forward(x, kernel, stride, padding, dilation)`` and ``backward(grad_out, x, kernel, ...)`` on ``case`` in
    ``dtype`` equal the float64 reference within the rounding bounds; returns the forward's result."""
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    context = f"{context}, {np.dtype(dtype)}, case {case}"
    out = forward(x, kernel, stride, padding, dilation)
    assert_forward_matches(out, x, kernel, stride, padding, dilation, context)
    grads = backward(grad_out, x, kernel, stride, padding, dilation)
    assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, context)
    return out


def good_args():
    """``(x, kernel, stride, padding, dilation)``: a valid float64 call that ``ERROR_INPUTS`` each break once."""
    x, kernel, _, stride, padding, dilation = make_case((2, 4, 2, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1)))
    return x, kernel, stride, padding, dilation


ERROR_INPUTS = [
    # (description, mutate(args dict) -> None, error type, text in message)
    ("x 3-D", lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-D"),
    ("kernel 5-D", lambda a: a.update(kernel=a["kernel"][0]), ValueError, "kernel must be 6-D"),
    ("G not dividing C", lambda a: a.update(kernel=np.zeros((2, 3, 3, 3, 6, 6))), ValueError, "must divide"),
    ("kernel spatial != output", lambda a: a.update(kernel=np.zeros((2, 2, 3, 3, 5, 6))), ValueError,
     "must equal the output size 6x6"),
    ("stride 0", lambda a: a.update(stride=0), ValueError, "stride must be >= 1"),
    ("dilation -1", lambda a: a.update(dilation=(1, -1)), ValueError, "dilation must be >= 1"),
    ("padding -1", lambda a: a.update(padding=-1), ValueError, "padding must be >= 0"),
    ("stride float", lambda a: a.update(stride=1.5), TypeError, "stride must be an int"),
    ("stride triple", lambda a: a.update(stride=(1, 1, 1)), ValueError, "stride must be an int or an (h, w) pair"),
    ("stride bool", lambda a: a.update(stride=True), TypeError, "stride"),
    ("output < 1", lambda a: a.update(x=np.zeros((2, 4, 1, 1)), padding=0), ValueError, "output size would be"),
    ("int x", lambda a: a.update(x=a["x"].astype(np.int64)), TypeError, "x must have dtype float32 or float64"),
    ("complex kernel", lambda a: a.update(kernel=a["kernel"].astype(complex)), TypeError, "kernel must have dtype"),
    ("object x", lambda a: a.update(x=a["x"].astype(object)), TypeError, "x must have dtype"),
    ("float16 x", lambda a: a.update(x=a["x"].astype(np.float16)), TypeError, "got float16"),
    ("mixed dtypes", lambda a: a.update(x=a["x"].astype(np.float32)), TypeError, "same dtype"),
    ("batch mismatch", lambda a: a.update(kernel=a["kernel"][:1]), ValueError, "batch size 1 does not match"),
    ("x not an array", lambda a: a.update(x="abc"), TypeError, "x must be a NumPy array"),
    ("empty channels", lambda a: a.update(x=np.zeros((2, 0, 6, 6)), kernel=np.zeros((2, 1, 3, 3, 6, 6))),
     ValueError, "no empty dimension other than the batch"),
]


# Hyper-parameters far beyond the image: v3 and v4 would need scratch growing with stride**2 or the dilation,
# so the CPU policy runs v2; each must equal the definition's loops (``backward_loops``).
# (B, C, G, H, W, Kh, Kw, stride, padding, dilation): odd sizes, strides 1-3, dilations 1-2, rectangular
# kernels, G = 1 and G = C, taps reading past every edge, images tall enough for several v3 bands.
CASES = [
    (1, 4, 1, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 6, 3, 7, 4, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 4, 4, 8, 9, 5, 3, (3, 2), (2, 0), (1, 2)),
    (2, 8, 2, 6, 6, 3, 3, (2, 2), (2, 2), (2, 2)),
    (1, 3, 3, 2, 3, 3, 3, (1, 1), (1, 1), (1, 1)),  # input smaller than the kernel
    (2, 4, 2, 11, 5, 3, 2, (2, 3), (1, 2), (2, 1)),  # rectangular kernel
    (1, 4, 2, 1, 1, 1, 1, (1, 1), (0, 0), (1, 1)),  # 1x1 everything
    (1, 34, 2, 9, 10, 7, 7, (1, 1), (3, 3), (1, 1)),  # 17 channels per group, RedNet's K7
    (2, 32, 2, 13, 11, 7, 5, (2, 2), (3, 2), (1, 1)),  # 16 channels per group, stride 2, odd sizes
    (1, 5, 5, 12, 7, 3, 3, (3, 1), (0, 4), (2, 2)),  # padding wider than the kernel's reach
    (1, 4, 2, 5, 7, 2, 2, (2, 3), (0, 0), (1, 1)),  # last input row and columns read by no tap
    (1, 4, 2, 37, 30, 3, 3, (1, 1), (1, 1), (1, 1)),  # 3 bands of wide rows, the last one short
    (1, 4, 1, 70, 33, 3, 5, (2, 2), (1, 2), (1, 1)),  # 2 bands, stride 2
]

LARGE_CASES = [
    (1, 16, 4, 4, 4, 3, 3, (3000, 3000), (1, 1), (1, 1)),  # v3 phases: 741 MB before the policy
    (1, 4, 2, 5, 5, 3, 3, (1, 1), (99998, 99998), (100000, 100000)),  # 1x1 output, the centre tap inside
    (1, 4, 2, 4, 4, 3, 3, (10**6, 10**6), (10**6, 10**6), (1, 1)),  # 3x3 output, one row/column inside
    (1, 2, 1, 4, 5, 2, 2, (2**31 - 1, 2**31 - 1), (0, 0), (1, 1)),  # the largest stride spec accepts
    (1, 4, 1, 6, 4, 3, 3, (1, 3000), (1, 1), (2, 1)),  # huge along W only
]

# Lines for a NUMBA_BOUNDSCHECK=1 script that has imported numba, numpy as np and involution.fast.simd: they prove
# that the vector loads' bounds checks are compiled in (a load past the end raises IndexError).
SIMD_BOUNDSCHECK_PROBE = """
@numba.njit
def load_past_end(array):
    return simd.lane(simd.load(array, array.size - 1, 8), 0)

try:
    load_past_end(np.zeros(8, np.float32))
    raise SystemExit("simd.load is not bounds-checked under NUMBA_BOUNDSCHECK")
except IndexError:
    pass
"""

# A case with padding on every side, stride 2 rows and dilation 2 columns, for non-finite inputs.
NONFINITE_CASE = (2, 4, 2, 6, 7, 3, 3, (2, 1), (2, 1), (1, 2))


def make_nonfinite_case(dtype=np.float64):
    """The arrays of ``NONFINITE_CASE`` with NaN and +-inf planted where the definition's answer is not finite.

    An infinite weight on a tap that reads the zero padding (``inf * 0 = NaN``), another on a tap inside x,
    NaN and inf in x, and an infinite and a NaN ``grad_out`` (whose products with the padding are NaN in
    ``grad_kernel``).
    """
    x, kernel, grad_out, stride, padding, dilation = make_case(NONFINITE_CASE, dtype, seed=5)
    kernel[0, 0, 0, 0, 0, 0] = np.inf    # output (0, 0), tap (0, 0) reads row -2: the padding
    kernel[1, 1, 1, 1, 1, 2] = -np.inf   # output (1, 2), tap (1, 1) reads x[1, c, 1, 3]
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 4, 0] = np.inf
    grad_out[0, 0, 0, 1] = np.inf        # times the padding under output (0, 1): NaN in grad_kernel
    grad_out[1, 3, 1, 1] = np.nan
    return x, kernel, grad_out, stride, padding, dilation


def assert_same_nonfinite(got, expected, context):
    """NaN, +inf and -inf at the same positions as ``expected``, the finite values close (dtype rounding)."""
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        mismatch = np.argwhere(test(got) != test(expected))
        assert mismatch.size == 0, (f"{context}: {name} positions differ from the reference at {mismatch[:5].tolist()}"
                                    f" (got {got[tuple(mismatch[0])]}, expected {expected[tuple(mismatch[0])]})")
    assert np.isnan(expected).any(), f"{context}: the case plants no NaN in the reference result"
    finite = np.isfinite(expected)
    scale = np.abs(expected[finite]).max()
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, err_msg=context,
                               atol=64 * np.finfo(got.dtype).eps * scale)


def backward_loops(grad_out, x, kernel, stride, padding, dilation):
    """``(grad_x, grad_kernel)`` by the definition's scalar loops (float64), for geometries whose padded input
    is too big for the reference's padded copy; like ``involution2d_loops``, finite inputs only."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    batch, channels, height, width = x.shape
    _, groups, kernel_h, kernel_w, out_h, out_w = kernel.shape
    grad_x, grad_kernel = np.zeros(x.shape), np.zeros(kernel.shape)
    for b, c, i, j, u, v in np.ndindex(batch, channels, out_h, out_w, kernel_h, kernel_w):
        g = c // (channels // groups)
        row, col = i * sh + u * dh - ph, j * sw + v * dw - pw
        if 0 <= row < height and 0 <= col < width:
            grad_x[b, c, row, col] += kernel[b, g, u, v, i, j] * grad_out[b, c, i, j]
            grad_kernel[b, g, u, v, i, j] += grad_out[b, c, i, j] * x[b, c, row, col]
    return grad_x, grad_kernel
