"""Test cases shared by the op tests: case tuples to arrays, reference-matching assertions, error inputs."""
import numpy as np

from involution.conformance import tolerances
from involution.spec import check_geometry, output_size


def case_id(case):
    """Test id of a ``(B, C, G, H, W, Kh, Kw, stride, padding, dilation)`` case, e.g. ``B1C4G1H5W5K3x3s(1,1)...``."""
    return "B{}C{}G{}H{}W{}K{}x{}s{}p{}d{}".format(*case).replace(" ", "")


def make_case(case, dtype=np.float64, seed=0):
    """``(x, kernel, grad_out, stride, padding, dilation)`` of ``case`` with standard normal values."""
    batch, channels, groups, height, width, kh, kw, stride, padding, dilation = case
    out_h, out_w = (output_size(n, k, s, p, d) for n, k, s, p, d in
                    zip((height, width), (kh, kw), stride, padding, dilation))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    kernel = rng.standard_normal((batch, groups, kh, kw, out_h, out_w)).astype(dtype)
    grad_out = rng.standard_normal((batch, channels, out_h, out_w)).astype(dtype)
    return x, kernel, grad_out, stride, padding, dilation


def assert_forward_matches(out, x, kernel, stride, padding, dilation, context):
    """``out`` equals the float64 reference within the rounding bound of ``Kh*Kw`` terms in ``out.dtype``."""
    geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
    tolerances.assert_matches_reference({"out": out}, x, kernel, geometry, context)


def assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, context):
    """``(grad_x, grad_kernel)`` equal the float64 reference within their reductions' rounding bounds."""
    geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
    tolerances.assert_matches_reference(dict(zip(("grad_x", "grad_kernel"), grads)), x, kernel, geometry, context,
                                        grad_out)


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
