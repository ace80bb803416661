"""The torch bridge: gradcheck in float64, values and gradients equal to the unfold oracle, the fast layer."""
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from involution.conformance import oracle, tolerances  # noqa: E402
from involution.torch import ops as torch_ops  # noqa: E402
from involution.spec import check_geometry, output_size  # noqa: E402

# (B, C, G, H, W, Kh, Kw, stride, padding, dilation)
CASES = [
    (1, 4, 2, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 6, 3, 7, 5, 3, 2, (2, 1), (1, 2), (1, 2)),
    (1, 32, 2, 9, 8, 7, 7, (2, 2), (3, 3), (1, 1)),
]
IDS = ["B{}C{}G{}H{}W{}K{}x{}s{}p{}d{}".format(*case).replace(" ", "") for case in CASES]


def make_case(case, dtype, seed=0):
    """``(x, kernel, grad_out, stride, padding, dilation)`` as leaf tensors needing gradients."""
    batch, channels, groups, height, width, kh, kw, stride, padding, dilation = case
    out_h, out_w = (output_size(n, k, s, p, d) for n, k, s, p, d in
                    zip((height, width), (kh, kw), stride, padding, dilation))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator, dtype=dtype, requires_grad=True)
    kernel = torch.randn(batch, groups, kh, kw, out_h, out_w, generator=generator, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(batch, channels, out_h, out_w, generator=generator, dtype=dtype)
    return x, kernel, grad_out, stride, padding, dilation


# Small: gradcheck calls the op twice per input element.
GRADCHECK_CASES = [(1, 2, 1, 4, 5, 3, 3, (1, 1), (1, 1), (1, 1)), (1, 2, 2, 5, 4, 3, 2, (2, 1), (1, 2), (1, 2))]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda case: "s{}p{}d{}".format(*case[7:]).replace(" ", ""))
def test_gradcheck_float64(case):
    x, kernel, _, stride, padding, dilation = make_case(case, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, kernel: torch_ops.involution2d(x, kernel, stride, padding, dilation), (x, kernel))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_backward_equal_the_oracle(case, dtype):
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    geometry = check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation)
    out = torch_ops.involution2d(x, kernel, stride, padding, dilation)
    grad_x, grad_kernel = torch.autograd.grad(out, (x, kernel), grad_out)
    x64, kernel64 = (tensor.detach().double().requires_grad_() for tensor in (x, kernel))
    expected = oracle.involution2d(x64, kernel64, stride, padding, dilation)
    expected_grads = torch.autograd.grad(expected, (x64, kernel64), grad_out.double())
    magnitudes = tolerances.magnitudes(x.detach().numpy(), kernel.detach().numpy(), geometry, grad_out.numpy())
    terms = (tolerances.forward_terms(geometry), tolerances.grad_x_terms(geometry),
             tolerances.grad_kernel_terms(geometry))
    context = f"{dtype}, case {case}"
    for name, actual, wanted, n, magnitude in zip(("out", "grad_x", "grad_kernel"),
                                                   (out, grad_x, grad_kernel), (expected, *expected_grads),
                                                   terms, magnitudes):
        assert actual.dtype == dtype and actual.device == x.device, f"{name}: {actual.dtype} {actual.device}"
        tolerance = tolerances.bound(n, actual.detach().numpy().dtype, magnitude)
        tolerances.assert_within(actual.detach().numpy(), wanted.detach().numpy(), tolerance, name, context)


def test_cpu_result_is_a_tensor_over_the_kernel_output():
    x, kernel, _, stride, padding, dilation = make_case(CASES[0], torch.float32)
    out = torch_ops.involution2d(x.detach(), kernel.detach(), stride, padding, dilation)
    assert out.is_contiguous() and not out.requires_grad
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size(), "result is not a bare kernel output"


def test_non_contiguous_tensors():
    x, kernel, grad_out, stride, padding, dilation = make_case(CASES[1], torch.float64)
    x_t = x.detach().transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    assert not x_t.is_contiguous()
    out = torch_ops.involution2d(x_t, kernel, stride, padding, dilation)
    expected = oracle.involution2d(x.detach(), kernel.detach(), stride, padding, dilation)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-12, atol=1e-12)
    out.backward(grad_out.expand_as(out))  # an expanded (stride-0) grad_out
    assert x_t.grad.shape == x.shape and torch.isfinite(x_t.grad).all()


def test_bad_inputs_raise_named_errors():
    x, kernel, _, stride, padding, dilation = make_case(CASES[0], torch.float32)
    with pytest.raises(TypeError, match=re.escape("x must be a torch.Tensor, got ndarray")):
        torch_ops.involution2d(x.detach().numpy(), kernel)
    with pytest.raises(TypeError, match=re.escape("kernel must have dtype float32, float64, float16 or bfloat16, "
                                                  "got int32")):
        torch_ops.involution2d(x, kernel.int(), stride, padding, dilation)
    with pytest.raises(TypeError, match=re.escape("x and kernel must have the same dtype")):
        torch_ops.involution2d(x, kernel.half(), stride, padding, dilation)
    with pytest.raises(ValueError, match=re.escape("stride must be >= 1, got 0")):
        torch_ops.involution2d(x, kernel, 0, padding, dilation)


def test_fast_layer_equals_taps_layer():
    torch_models = pytest.importorskip("involution.torch.models")
    torch.manual_seed(0)
    layer = torch_models.Involution2d(32, kernel_size=7, stride=2, group_channels=16).double()
    x = torch.randn(2, 32, 11, 10, dtype=torch.float64)
    assert_fast_equals_taps(layer, x)


def assert_fast_equals_taps(layer, x):
    """``layer``'s output, input gradient and parameter gradients (of ``sum(out**2)``) with the ``fast`` backend
    equal the ``taps`` backend's within 1e-10 (float64)."""
    results = {}
    for backend in ("taps", "fast"):
        layer.set_backend(backend)
        layer.zero_grad()
        x_leaf = x.clone().requires_grad_()
        out = layer(x_leaf)
        out.square().sum().backward()
        results[backend] = (out.detach(), x_leaf.grad, *(p.grad.clone() for p in layer.parameters()))
    for index, (fast, taps) in enumerate(zip(results["fast"], results["taps"])):
        torch.testing.assert_close(fast, taps, rtol=1e-10, atol=1e-10,
                                   msg=lambda text: f"tensor {index} (out, grad_x, parameter grads): {text}")


def test_front_door_backward_is_the_registered_backward_op():
    import involution

    x, kernel, grad_out, stride, padding, dilation = make_case(CASES[1], torch.float64)
    out = torch_ops.involution2d(x, kernel, stride, padding, dilation)
    expected = torch.autograd.grad(out, (x, kernel), grad_out)
    got = involution.involution2d_backward(grad_out, x.detach(), kernel.detach(), stride, padding, dilation,
                                           backend="fast")
    for name, actual, wanted in zip(("grad_x", "grad_kernel"), got, expected):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0, msg=name)
    with pytest.raises(TypeError, match=re.escape("grad_out must be a torch.Tensor, got ndarray")):
        torch_ops.involution2d_backward(grad_out.numpy(), x, kernel, stride, padding, dilation)
    with pytest.raises(ValueError, match=re.escape("grad_out must have the output shape")):
        torch_ops.involution2d_backward(grad_out[..., :-1], x, kernel, stride, padding, dilation)
