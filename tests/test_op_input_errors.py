"""Issue 14, points 5 and 6 (reference part): the NumPy reference op at the edges.

Huge hyper-parameters get the spec's named errors; memory grows with the work, not with padding or dilation;
``output_size`` rejects what is not a size; masked arrays are rejected; an infinite kernel weight on a padded tap
gives NaN, as the definition says (docs/policy.md); an empty batch gives empty results.
"""
import re
import tracemalloc

import numpy as np
import pytest

from involution import backends
from involution.reference import involution2d, involution2d_backward, output_size
from involution.reference.gradcheck import involution_gradients_fd
from involution.reference.loops import involution2d_loops
from involution.spec import MAX_EXTENT

from cases import make_case


def peak_bytes(function, *args):
    """``(result, peak bytes allocated while it ran)``, NumPy's buffers included (NumPy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- huge hyper-parameters: named errors from the spec ---------------------------------------------------
@pytest.mark.parametrize("stride, padding, dilation, message", [
    (1, 2**31, 1, f"padding must be <= {MAX_EXTENT}, got {2**31}"),
    (2**63, 1, 1, f"stride must be <= {MAX_EXTENT}, got {2**63}"),
    (1, 1, 2**40, f"dilation must be <= {MAX_EXTENT}, got {2**40}"),
    (1, 2**30, 1, f"padded x height (size + 2*padding = {6 + 2**31}) must be <= {MAX_EXTENT}"),
    (1, 0, MAX_EXTENT, "output size would be"),
])
def test_huge_hyper_parameters_are_named_errors(stride, padding, dilation, message):
    x, kernel, _, _, _, _ = make_case((1, 2, 1, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1)))
    for call in (lambda: involution2d(x, kernel, stride, padding, dilation),
                 lambda: involution2d_backward(np.zeros((1, 2, 6, 6)), x, kernel, stride, padding, dilation)):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


# --- memory grows with the work --------------------------------------------------------------------------
def test_dilation_100000_with_a_1x1_output_costs_what_dilation_1_does():
    """K=3, dilation = padding = 100000 on a 1x1 input: output 1x1 and only the centre tap reads x. A padded copy
    would be 200001**2 values per channel (the old reference: MemoryError, 149 GiB)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 1, 1))
    kernel = rng.standard_normal((2, 2, 3, 3, 1, 1))
    out, peak = peak_bytes(involution2d, x, kernel, 1, 100000, 100000)
    centre = np.repeat(kernel[:, :, 1, 1], 2, axis=1)  # channel c uses group c // 2
    np.testing.assert_array_equal(out, centre * x, err_msg="only the centre tap reads x; the others read zeros")
    assert peak < 64 * 1024, f"forward allocated {peak} bytes at peak for a 2x4x1x1 output"
    grad_out = rng.standard_normal(out.shape)
    (grad_x, grad_kernel), peak = peak_bytes(involution2d_backward, grad_out, x, kernel, 1, 100000, 100000)
    np.testing.assert_array_equal(grad_x, centre * grad_out)
    expected_kernel = np.zeros_like(kernel)
    expected_kernel[:, :, 1, 1] = (grad_out * x).reshape(2, 2, 2, 1, 1).sum(axis=2)
    np.testing.assert_allclose(grad_kernel, expected_kernel, rtol=1e-15, atol=0)
    assert peak < 64 * 1024, f"backward allocated {peak} bytes at peak"


@pytest.mark.parametrize("case", [
    (1, 4, 2, 7, 6, 3, 3, (1, 1), (100000, 100000), (100000, 100000)),
    (2, 2, 1, 5, 9, 3, 5, (2, 3), (2**29, 7), (2**29, 3)),
    (1, 2, 2, 5, 4, 3, 2, (1, 1), ((MAX_EXTENT - 5) // 2, 1), ((MAX_EXTENT - 5) // 2, 2)),  # H + 2*ph = MAX_EXTENT
], ids=["dilation-1e5", "dilation-2^29", "padded-extent-at-the-limit"])
def test_huge_valid_hyper_parameters_equal_the_definition(case):
    x, kernel, grad_out, stride, padding, dilation = make_case(case)
    out, peak = peak_bytes(involution2d, x, kernel, stride, padding, dilation)
    expected = involution2d_loops(x, kernel, stride, padding, dilation)
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-14 * np.abs(expected).max(), err_msg=str(case))
    assert peak < 16 * (x.nbytes + kernel.nbytes + out.nbytes), f"peak {peak} bytes, case {case}"
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    fd_x, fd_kernel = involution_gradients_fd(involution2d, grad_out, x, kernel, stride, padding, dilation)
    # Central differences of a bilinear function in float64: round-off only.
    np.testing.assert_allclose(grad_x, fd_x, rtol=1e-6, atol=1e-7, err_msg=f"grad_x, case {case}")
    np.testing.assert_allclose(grad_kernel, fd_kernel, rtol=1e-6, atol=1e-7, err_msg=f"grad_kernel, case {case}")


# --- output_size -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arguments, error, message", [
    ((10, 3, 0, 1, 1), ValueError, "stride must be >= 1, got 0"),  # was ZeroDivisionError
    ((10, 3, -1, 1, 1), ValueError, "stride must be >= 1, got -1"),  # returned -1
    ((10, 0, 1, 1, 1), ValueError, "kernel must be >= 1, got 0"),
    ((-1, 3, 1, 1, 1), ValueError, "size must be >= 0, got -1"),
    ((10, 3, 1, -1, 1), ValueError, "padding must be >= 0, got -1"),
    ((10, 3, 1, 1, 0), ValueError, "dilation must be >= 1, got 0"),
    ((10, 3, 1.5, 1, 1), TypeError, "stride must be an int, got float 1.5"),
    ((10, 3, True, 1, 1), TypeError, "stride must be an int, got True"),
    ((10, 3, (2, 2), 1, 1), TypeError, r"stride must be an int, got tuple \(2, 2\)"),
])
def test_output_size_rejects_what_is_not_a_size(arguments, error, message):
    with pytest.raises(error, match=message):
        output_size(*arguments)


# --- masked arrays ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("masked", ["x", "kernel", "grad_out"])
def test_masked_arrays_are_rejected(masked):
    x, kernel, grad_out, stride, padding, dilation = make_case((1, 2, 1, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)))
    arrays = dict(x=x, kernel=kernel, grad_out=grad_out)
    arrays[masked] = np.ma.masked_array(arrays[masked], mask=np.zeros(arrays[masked].shape, bool))
    arrays[masked][(0,) * arrays[masked].ndim] = np.ma.masked
    message = f"{masked} must be a plain NumPy array .* got a masked array"
    if masked != "grad_out":  # the forward does not take grad_out
        with pytest.raises(TypeError, match=message):
            involution2d(arrays["x"], arrays["kernel"], stride, padding, dilation)
    with pytest.raises(TypeError, match=message):
        involution2d_backward(arrays["grad_out"], arrays["x"], arrays["kernel"], stride, padding, dilation)


# --- non-finite values follow the definition (docs/policy.md) ---------------------------------------------
def inf_kernel_case():
    """x of ones (1, 2, 3, 3), padding 1, 3x3 kernel of zeros except one infinite weight per (tap, output)."""
    x = np.ones((1, 2, 3, 3))
    kernel = np.zeros((1, 1, 3, 3, 3, 3))
    kernel[0, 0, 0, 0, 0, 0] = np.inf  # output (0, 0), tap (0, 0): reads x_pad[-1, -1], the zero padding
    kernel[0, 0, 1, 1, 2, 2] = np.inf  # output (2, 2), tap (1, 1): reads x[2, 2] = 1
    return x, kernel


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_inf_kernel_weight_on_a_padded_tap_gives_nan():
    x, kernel = inf_kernel_case()
    out = involution2d(x, kernel, 1, 1, 1)
    assert np.isnan(out[0, :, 0, 0]).all(), f"inf * 0 (padding) must be NaN, got {out[0, :, 0, 0]}"
    assert np.isposinf(out[0, :, 2, 2]).all(), f"inf * 1 must be inf, got {out[0, :, 2, 2]}"
    others = np.ones((3, 3), bool)
    others[0, 0] = others[2, 2] = False
    np.testing.assert_array_equal(out[0, :, others], 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_inf_kernel_weight_on_a_padded_tap_matches_torch_autograd():
    """The torch tap loop (plain PyTorch ops, autograd) is the definition too: same NaN/inf pattern and gradients."""
    torch = pytest.importorskip("torch")
    from involution.torch.taps import involution2d as torch_involution2d

    x, kernel = inf_kernel_case()
    grad_out = np.random.default_rng(0).standard_normal((1, 2, 3, 3))
    x_torch, kernel_torch = (torch.tensor(a, requires_grad=True) for a in (x, kernel))
    out_torch = torch_involution2d(x_torch, kernel_torch, 1, 1, 1)
    out_torch.backward(torch.tensor(grad_out))
    np.testing.assert_array_equal(involution2d(x, kernel, 1, 1, 1), out_torch.detach().numpy())
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, 1, 1, 1)
    # grad_x: the padded tap's inf * grad_out lands on the padding and is dropped; the interior inf reaches x[2, 2].
    np.testing.assert_array_equal(grad_x, x_torch.grad.numpy())
    np.testing.assert_array_equal(grad_kernel, kernel_torch.grad.numpy())
    assert np.isfinite(grad_x[0, :, :2]).all() and np.isinf(grad_x[0, :, 2, 2]).all(), grad_x


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("name", backends.names())
def test_every_backend_gives_the_definitions_answer_for_inf_weights(name):
    """One answer on every registered backend (its default kernels): NaN at the padded tap, inf inside, the rest 0."""
    try:
        module = backends.load(name)
    except ImportError as error:
        pytest.skip(str(error))
    x, kernel = inf_kernel_case()
    expected = involution2d(x, kernel, 1, 1, 1)
    if backends.get(name).framework == "torch":
        import torch

        out = module.involution2d(torch.tensor(x), torch.tensor(kernel), 1, 1, 1).numpy()
    else:
        out = module.involution2d(x, kernel, 1, 1, 1)
    np.testing.assert_array_equal(out, expected, err_msg=f"backend {name}")


def test_nan_in_x_reaches_exactly_the_outputs_that_read_it():
    x, kernel, _, stride, padding, dilation = make_case((1, 2, 1, 7, 7, 3, 3, (2, 2), (1, 1), (2, 2)))
    x[0, 0, 5, 1] = np.nan
    out = involution2d(x, kernel, stride, padding, dilation)
    # Output (i, j) of the 3x3 output reads x[2i + 2u - 1, 2j + 2v - 1]: row 5 for (i, u) in {(1, 2), (2, 1)},
    # column 1 for (j, v) in {(0, 1), (1, 0)}.
    assert out.shape == (1, 2, 3, 3)
    expected = np.zeros((3, 3), bool)
    expected[np.ix_([1, 2], [0, 1])] = True
    np.testing.assert_array_equal(np.isnan(out[0, 0]), expected)
    assert not np.isnan(out[0, 1]).any()


# --- empty batch -----------------------------------------------------------------------------------------
def test_empty_batch_gives_empty_results():
    x = np.zeros((0, 4, 7, 5), np.float32)
    kernel = np.zeros((0, 2, 3, 3, 4, 5), np.float32)
    out = involution2d(x, kernel, (2, 1), 1, 1)
    assert out.shape == (0, 4, 4, 5) and out.dtype == np.float32
    grad_x, grad_kernel = involution2d_backward(out, x, kernel, (2, 1), 1, 1)
    assert grad_x.shape == x.shape and grad_kernel.shape == kernel.shape
    assert grad_x.dtype == grad_kernel.dtype == np.float32


@pytest.mark.parametrize("x_shape, kernel_shape, name", [
    ((2, 0, 5, 5), (2, 1, 3, 3, 5, 5), "x"),
    ((2, 4, 0, 5), (2, 1, 3, 3, 0, 5), "x"),
    ((2, 4, 5, 5), (2, 1, 0, 3, 5, 5), "kernel"),
    ((2, 4, 5, 5), (2, 0, 3, 3, 5, 5), "kernel"),
])
def test_other_empty_dimensions_are_errors(x_shape, kernel_shape, name):
    with pytest.raises(ValueError, match=f"{name} must have no empty dimension"):
        involution2d(np.zeros(x_shape), np.zeros(kernel_shape), 1, 1, 1)


# --- arrays and tensors where an int or an (h, w) pair is expected ----------------------------------------
def array_options():
    """Arrays and tensors of any shape, which have ``__index__`` for one element: never an option's value."""
    values = [np.array([2, 2]), np.array(2), np.array([2]), [np.array(2), 1]]
    try:
        import torch
    except ImportError:
        return values
    return values + [torch.tensor([2, 2]), torch.tensor(2), (torch.tensor(1), 1)]


@pytest.mark.parametrize("name", backends.names())
@pytest.mark.parametrize("option", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", array_options(), ids=repr)
def test_arrays_and_tensors_as_options_are_type_errors_naming_them(name, option, value):
    try:
        forward, _ = backends.functions(name)
    except ImportError as error:
        pytest.skip(str(error))
    x, kernel = make_case((1, 2, 1, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)))[:2]
    if backends.get(name).framework == "torch":
        import torch

        x, kernel = torch.from_numpy(x), torch.from_numpy(kernel)
    arguments = {"stride": 1, "padding": 1, "dilation": 1, option: value}
    with pytest.raises(TypeError, match=rf"^{option} must be an int or an \(h, w\) pair of ints, got "):
        forward(x, kernel, **arguments)


@pytest.mark.parametrize("name", ["fast", "taps"])
@pytest.mark.parametrize("argument, layout", [("x", "sparse_coo"), ("kernel", "sparse_coo"), ("x", "sparse_csr"),
                                              ("kernel", "sparse_csr"), ("x", "_mkldnn")])  # mkldnn: at most 5-D
def test_sparse_and_other_layouts_are_refused_naming_the_argument_and_layout(name, layout, argument):
    torch = pytest.importorskip("torch")
    try:
        forward, _ = backends.functions(name, "torch")
    except ImportError as error:
        pytest.skip(str(error))
    tensors = dict(x=torch.randn(1, 2, 5, 5), kernel=torch.randn(1, 1, 3, 3, 5, 5))
    convert = {"sparse_coo": lambda t: t.to_sparse(), "_mkldnn": lambda t: t.to_mkldnn(),
               "sparse_csr": lambda t: t.to_sparse(layout=torch.sparse_csr, dense_dim=t.dim() - 2)}[layout]
    tensors[argument] = convert(tensors[argument])
    with pytest.raises(TypeError, match=re.escape(f"{argument} must be a dense (strided) tensor, got a {layout} "
                                                  f"tensor (layout torch.{layout})")):
        forward(tensors["x"], tensors["kernel"], 1, 1, 1)
