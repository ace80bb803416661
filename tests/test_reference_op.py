"""The NumPy reference op: forward against the loop definition, backward against finite differences, errors."""
import re

import numpy as np
import pytest

from involution.reference import involution2d, involution2d_backward, output_size
from involution.reference.gradcheck import involution_gradients_fd

from cases import ERROR_INPUTS, case_id, good_args, make_case
from involution.reference.loops import involution2d_loops

# (B, C, G, H, W, Kh, Kw, stride, padding, dilation)
CASES = [
    (1, 4, 1, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 6, 3, 7, 4, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 4, 4, 8, 9, 5, 3, (3, 2), (2, 0), (1, 2)),
    (2, 8, 2, 6, 6, 3, 3, (2, 2), (2, 2), (2, 2)),
    (1, 3, 3, 2, 3, 3, 3, (1, 1), (1, 1), (1, 1)),  # H smaller than the kernel
    (1, 2, 1, 9, 7, 1, 1, (3, 3), (0, 0), (1, 1)),  # 1x1 kernel, odd size with stride
    (2, 4, 2, 11, 5, 3, 2, (2, 3), (1, 2), (2, 1)),  # rectangular kernel
    (1, 4, 2, 1, 1, 1, 1, (1, 1), (0, 0), (1, 1)),  # 1x1 spatial
]
IDS = [case_id(case) for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_equals_loop_definition(case, dtype):
    x, kernel, _, stride, padding, dilation = make_case(case, dtype)
    out = involution2d(x, kernel, stride, padding, dilation)
    expected = involution2d_loops(x.astype(np.float64), kernel.astype(np.float64), stride, padding, dilation)
    assert out.dtype == dtype and out.shape == expected.shape
    kk = kernel.shape[2] * kernel.shape[3]
    # float32 sums of kk products: error <= kk * eps * sum|terms|, bounded here by kk * eps * max|x| * max|k| * kk.
    scale = np.abs(x).max() * np.abs(kernel).max() * kk
    atol = 4 * kk * np.finfo(dtype).eps * scale
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol, err_msg=f"case {case}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_equals_finite_differences(case):
    x, kernel, _, stride, padding, dilation = make_case(case)
    grad_out = np.random.default_rng(1).standard_normal(involution2d(x, kernel, stride, padding, dilation).shape)
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    fd_x, fd_kernel = involution_gradients_fd(involution2d, grad_out, x, kernel, stride, padding, dilation)
    assert grad_x.shape == x.shape and grad_kernel.shape == kernel.shape
    # Central differences on a function linear in each argument: only round-off, ~ulp(loss)/eps ~ 1e-9.
    np.testing.assert_allclose(grad_x, fd_x, rtol=1e-6, atol=1e-7, err_msg=f"grad_x, case {case}")
    np.testing.assert_allclose(grad_kernel, fd_kernel, rtol=1e-6, atol=1e-7, err_msg=f"grad_kernel, case {case}")


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("size", [(6, 6), (7, 5)])
def test_backward_sweep_strides_dilations_sizes(stride, dilation, size):
    case = (1, 4, 2, *size, 3, 3, (stride, stride), (dilation, dilation), (dilation, dilation))
    x, kernel, _, stride, padding, dilation = make_case(case, seed=stride * 10 + dilation)
    grad_out = np.random.default_rng(2).standard_normal(involution2d(x, kernel, stride, padding, dilation).shape)
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    fd_x, fd_kernel = involution_gradients_fd(involution2d, grad_out, x, kernel, stride, padding, dilation)
    np.testing.assert_allclose(grad_x, fd_x, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad_kernel, fd_kernel, rtol=1e-6, atol=1e-7)


def test_float32_backward_keeps_dtype():
    x, kernel, _, stride, padding, dilation = make_case(CASES[1], np.float32)
    grad_out = np.ones(involution2d(x, kernel, stride, padding, dilation).shape, np.float32)
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    assert grad_x.dtype == np.float32 and grad_kernel.dtype == np.float32


def test_non_contiguous_inputs_equal_contiguous():
    x, kernel, _, stride, padding, dilation = make_case(CASES[1])
    x_strided = np.asfortranarray(x)[:, ::-1][:, ::-1]
    kernel_strided = np.repeat(kernel, 2, axis=-1)[..., ::2]
    assert not x_strided.flags.c_contiguous and not kernel_strided.flags.c_contiguous
    # einsum may sum in another order for another memory layout: equal up to float64 round-off.
    np.testing.assert_allclose(involution2d(x_strided, kernel_strided, stride, padding, dilation),
                               involution2d(x, kernel, stride, padding, dilation), rtol=1e-13, atol=1e-13)


def test_nan_propagates_only_where_it_is_read():
    x, kernel, _, stride, padding, dilation = make_case(CASES[0])
    x[0, 1, 2, 2] = np.nan
    out = involution2d(x, kernel, stride, padding, dilation)
    assert np.isnan(out[0, 1, 1:4, 1:4]).all()
    assert np.isfinite(np.delete(out[0], 1, axis=0)).all()
    assert np.isfinite(out[0, 1, 0, 0])


@pytest.mark.parametrize("description, mutate, error, text", ERROR_INPUTS, ids=[e[0] for e in ERROR_INPUTS])
def test_bad_input_raises_named_error(description, mutate, error, text):
    x, kernel, stride, padding, dilation = good_args()
    args = dict(x=x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    mutate(args)
    with pytest.raises(error, match=re.escape(text)):
        involution2d(**args)


def test_backward_bad_grad_out():
    x, kernel, stride, padding, dilation = good_args()
    with pytest.raises(ValueError, match="grad_out must have the output shape"):
        involution2d_backward(np.zeros((2, 4, 5, 5)), x, kernel, stride, padding, dilation)
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        involution2d_backward(np.zeros((2, 4, 6, 6), np.float32), x, kernel, stride, padding, dilation)


@pytest.mark.parametrize("size, kernel, stride, padding, dilation, expected", [
    (224, 7, 1, 3, 1, 224), (56, 7, 2, 3, 1, 28), (7, 7, 2, 3, 1, 4), (5, 3, 3, 0, 2, 1), (2, 3, 1, 0, 1, 0),
])
def test_output_size_rule(size, kernel, stride, padding, dilation, expected):
    assert output_size(size, kernel, stride, padding, dilation) == expected
