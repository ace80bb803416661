"""The registered torch op: torch.compile(fullgraph=True), torch.export, fake and meta tensors, FlopCounterMode,
float16/bfloat16, autocast and double backward.

Compile tests use a tiny RedNet (one block per stage, 32x32); the ``aot_eager`` backend (Dynamo + AOTAutograd +
the fake implementation, no code generation) runs in seconds, the inductor one is marked slow (minutes with a
cold cache on 2 cores).
"""
import copy
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from involution.conformance import oracle, tolerances  # noqa: E402
from involution.torch import ops as torch_ops  # noqa: E402
from involution.reference.complexity import count  # noqa: E402
from involution.reference.rednet import RedNet as NumpyRedNet  # noqa: E402
from involution.spec import check_geometry  # noqa: E402
from involution.torch import RedNet  # noqa: E402

# (x shape, kernel shape, stride, padding, dilation): each a valid call.
CALLS = [
    ((2, 8, 9, 9), (2, 2, 3, 3, 9, 9), 1, 1, 1),
    ((1, 6, 7, 5), (1, 3, 3, 2, 4, 7), (2, 1), (1, 2), (1, 2)),
    ((2, 32, 9, 8), (2, 2, 7, 7, 5, 4), 2, 3, 1),
]
CALL_IDS = ["s1p1d1", "s21p12d12-K3x2", "K7s2"]
TINY = dict(stage_blocks=(1, 1), stem_channels=16, base_channels=8, group_channels=4, kernel_size=3, num_classes=5)


def random_call(call, dtype=torch.float64, seed=0):
    x_shape, kernel_shape, stride, padding, dilation = call
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=generator, dtype=dtype)
    kernel = torch.randn(kernel_shape, generator=generator, dtype=dtype)
    return x, kernel, stride, padding, dilation


def tiny_rednet(dtype=torch.float64, backend="fast"):
    return RedNet(**TINY, dtype=dtype, backend=backend)


def run_training_step(model, x, forward=None):
    """Logits, input gradient and every parameter gradient of ``sum(logits**2)`` in train mode; ``forward``
    (default ``model``) computes the logits, e.g. ``torch.compile(model)``."""
    x = x.clone().requires_grad_()
    logits = (model.train() if forward is None else forward)(x)
    logits.square().sum().backward()
    return {"logits": logits.detach(), "grad_x": x.grad,
            **{name: parameter.grad for name, parameter in model.named_parameters()}}


def assert_all_close(actual: dict, expected: dict, rtol: float, what: str):
    for name, wanted in expected.items():
        error = (actual[name] - wanted).abs().max().item()
        scale = wanted.abs().max().item()
        assert error <= rtol * scale, f"{what}: {name} differs by {error:.3e} (max |eager| {scale:.3e}, rtol {rtol})"


# --- torch.compile and torch.export ---------------------------------------------------------------------------
def test_fullgraph_compile_equals_eager_forward_and_backward():
    model = tiny_rednet()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    compiled_model = copy.deepcopy(model)
    expected = run_training_step(model, x)
    compiled = torch.compile(compiled_model.train(), fullgraph=True, backend="aot_eager")
    got = run_training_step(compiled_model, x, compiled)
    # The same kernels on the same data: only the order of a few autograd accumulations may differ.
    assert_all_close(got, expected, 64 * torch.finfo(torch.float64).eps, "aot_eager fullgraph vs eager")
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(compiled_model.get_buffer(name), buffer, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_fullgraph_inductor_compile_equals_eager():
    model = tiny_rednet(torch.float32)
    x = torch.randn(2, 3, 32, 32)
    compiled_model = copy.deepcopy(model)
    expected = run_training_step(model, x)
    got = run_training_step(compiled_model, x, torch.compile(compiled_model.train(), fullgraph=True))
    # Inductor fuses BN and ReLU differently from eager: float32 rounding through ~15 layers.
    assert_all_close(got, expected, 1e-4, "inductor fullgraph vs eager")


def test_export_runs_the_op_and_equals_eager():
    model = tiny_rednet(torch.float32).eval()
    x = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.involution.involution2d.default) == 3, targets
    other = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), model(other), rtol=0, atol=0)


# --- fake and meta tensors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_meta_and_fake_tensors_give_the_real_shapes(call):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, kernel, stride, padding, dilation = random_call(call)
    out = torch_ops.involution2d(x, kernel, stride, padding, dilation)
    grad_out = torch.ones_like(out)
    grads = torch.ops.involution.involution2d_backward(grad_out, x, kernel, *(
        check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation).hyper_parameters))
    meta = [tensor.to("meta") for tensor in (x, kernel, grad_out)]
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(tensor) for tensor in (x, kernel, grad_out)]
    for label, (x_, kernel_, grad_out_) in (("meta", meta), ("fake", fake)):
        result = torch_ops.involution2d(x_, kernel_, stride, padding, dilation)
        assert (result.shape, result.dtype, result.device) == (out.shape, out.dtype, x_.device), label
        geometry = check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation)
        grad_x, grad_kernel = torch.ops.involution.involution2d_backward(grad_out_, x_, kernel_,
                                                                        *geometry.hyper_parameters)
        assert (grad_x.shape, grad_kernel.shape) == (grads[0].shape, grads[1].shape), label


def test_meta_tensors_get_the_named_errors():
    x, kernel = torch.empty(2, 8, 9, 9, device="meta"), torch.empty(2, 2, 3, 3, 5, 5, device="meta")
    with pytest.raises(ValueError, match=re.escape("kernel spatial size must equal the output size 9x9")):
        torch_ops.involution2d(x, kernel, 1, 1, 1)
    with pytest.raises(TypeError, match=re.escape("x must have dtype float32, float64, float16 or bfloat16, "
                                                  "got int64")):
        torch_ops.involution2d(x.long(), kernel, 2, 1, 1)
    with pytest.raises(ValueError, match=re.escape("grad_out must have the output shape (2, 8, 5, 5)")):
        torch.ops.involution.involution2d_backward(torch.empty(2, 8, 4, 4, device="meta"), x, kernel,
                                                   (2, 2), (1, 1), (1, 1))


def test_compile_reports_the_named_error_at_trace_time():
    x, kernel = torch.randn(2, 8, 9, 9), torch.randn(2, 2, 3, 3, 5, 5)
    compiled = torch.compile(lambda x, kernel: torch_ops.involution2d(x, kernel, 1, 1, 1), fullgraph=True,
                             backend="aot_eager")
    with pytest.raises(Exception) as info:
        compiled(x, kernel)
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(error, ValueError) and "kernel spatial size must equal the output size 9x9" in str(error)
               for error in chain) or "kernel spatial size must equal the output size 9x9" in str(info.value), chain


# --- FlopCounterMode ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_flop_counter_counts_forward_and_backward(call):
    x, kernel, stride, padding, dilation = random_call(call)
    x.requires_grad_(), kernel.requires_grad_()
    geometry = check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation)
    with FlopCounterMode(display=False) as counter:
        torch_ops.involution2d(x, kernel, stride, padding, dilation).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.involution.involution2d] == 2 * geometry.macs, counts
    assert counts[torch.ops.involution.involution2d_backward] == 4 * geometry.macs, counts


def test_rednet26_flops_exceed_the_taps_model_by_twice_the_involution_macs():
    """FlopCounterMode counts conv and matmul ops only, so the taps model (mul/add of slices) shows none of its
    involution work, and the fast model exactly 2 x the analytic counter's involution MACs more."""
    model = RedNet(26, backend="taps").eval()
    x = torch.randn(1, 3, 64, 64)
    totals = {}
    for backend in ("taps", "fast"):
        model.set_backend(backend)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        totals[backend] = counter.get_total_flops()
    report = count(NumpyRedNet(26), (64, 64))
    involution_macs = sum(layer.cost("full")[0] for layer in report.layers if layer.type == "Involution2d")
    assert involution_macs > 0
    assert totals["fast"] - totals["taps"] == 2 * involution_macs, (totals, involution_macs)
    assert totals["taps"] == 2 * report.total("fvcore").macs, (totals, report.total("fvcore"))


# --- float16, bfloat16, autocast ------------------------------------------------------------------------------
def half_tolerance(terms, dtype, magnitude, expected):
    """Bound on |float32-accumulated result rounded once to ``dtype`` - exact|: the float32 sum's error
    (``tolerances.bound``) plus one rounding to ``dtype`` (unit round-off times the value, plus its smallest
    normal for results in the subnormal range)."""
    accumulation = tolerances.bound(terms, np.float32, magnitude)
    unit_roundoff = torch.finfo(dtype).eps / 2
    return accumulation + unit_roundoff * (np.abs(expected) + accumulation) + torch.finfo(dtype).tiny


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_half_precision_against_float64(call, dtype):
    x, kernel, stride, padding, dilation = random_call(call, torch.float32)
    x, kernel = x.to(dtype).requires_grad_(), kernel.to(dtype).requires_grad_()
    grad_out_shape = check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation).out_shape
    grad_out = torch.randn(grad_out_shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = torch_ops.involution2d(x, kernel, stride, padding, dilation)
    grad_x, grad_kernel = torch.autograd.grad(out, (x, kernel), grad_out)
    # The exact answer for the rounded inputs: the float64 oracle on them.
    x64, kernel64 = (tensor.detach().double().requires_grad_() for tensor in (x, kernel))
    expected = oracle.involution2d(x64, kernel64, stride, padding, dilation)
    expected_grads = torch.autograd.grad(expected, (x64, kernel64), grad_out.double())
    geometry = check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation)
    magnitudes = tolerances.magnitudes(x64.detach().numpy(), kernel64.detach().numpy(), geometry,
                                       grad_out.double().numpy())
    terms = (tolerances.forward_terms(geometry), tolerances.grad_x_terms(geometry),
             tolerances.grad_kernel_terms(geometry))
    for name, actual, wanted, n, magnitude in zip(("out", "grad_x", "grad_kernel"), (out, grad_x, grad_kernel),
                                                   (expected, *expected_grads), terms, magnitudes):
        assert actual.dtype == dtype, f"{name}: {actual.dtype}"
        wanted = wanted.detach().numpy()
        tolerances.assert_within(actual.detach().double().numpy(), wanted,
                                 half_tolerance(n, dtype, magnitude, wanted), name, f"{dtype}, {call}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_runs_the_op_in_the_autocast_dtype_like_conv2d(dtype):
    x, kernel, stride, padding, dilation = random_call(CALLS[1], torch.float32)
    with torch.autocast("cpu", dtype=dtype):
        out = torch_ops.involution2d(x, kernel, stride, padding, dilation)
        conv = torch.nn.functional.conv2d(x, torch.randn(2, 6, 1, 1))
        out64 = torch_ops.involution2d(x.double(), kernel.double(), stride, padding, dilation)
    assert out.dtype == conv.dtype == dtype, (out.dtype, conv.dtype)
    torch.testing.assert_close(out, torch_ops.involution2d(x.to(dtype), kernel.to(dtype), stride, padding, dilation),
                               rtol=0, atol=0)
    assert out64.dtype == torch.float64, "float64 is not eligible for autocast (torch's rule)"


def test_rednet_trains_under_autocast():
    model = tiny_rednet(torch.float32)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.train()(x)
    assert logits.dtype == torch.bfloat16
    logits.float().square().sum().backward()
    grads = [parameter.grad for parameter in model.parameters()]
    assert all(grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads)
    assert any(grad.abs().sum() > 0 for grad in grads)


def test_rednet_in_bfloat16_matches_float32_logits():
    model = tiny_rednet(torch.float32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits: through ~15 layers the logits keep about 2 significant digits.
    error = (got.float() - expected).abs().max().item()
    assert error <= 0.1 * expected.abs().max().item(), f"bfloat16 logits off by {error} (max {expected.abs().max()})"


# --- double backward ------------------------------------------------------------------------------------------
def test_gradgradcheck_float64():
    # Tiny: gradgradcheck perturbs every element of x, kernel and grad_out, each time running the op pair.
    x, kernel, stride, padding, dilation = random_call(((1, 2, 4, 3), (1, 1, 2, 2, 3, 3), (2, 1), (1, 1), (1, 2)))
    x.requires_grad_(), kernel.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, kernel: torch_ops.involution2d(x, kernel, stride, padding, dilation), (x, kernel))


# --- forward mode, torch.func, vmap ---------------------------------------------------------------------------
# The "taps" backend is plain PyTorch, differentiated by torch's own formulas in every mode: the yardstick.
TRANSFORM_CALL = ((2, 4, 5, 4), (2, 2, 3, 2, 3, 2), (2, 1), (1, 0), (1, 2))  # strides, padding, dilation per axis


def transform_inputs(seed=0):
    x, kernel, stride, padding, dilation = random_call(TRANSFORM_CALL, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    tangents = tuple(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) for tensor in (x, kernel))
    return (x, kernel), tangents, lambda backend: (
        lambda x, kernel: backend.involution2d(x, kernel, stride, padding, dilation))


def assert_trees_close(actual, expected, what):
    """Every tensor of ``actual`` within float64 rounding of ``expected`` (bilinear: a few sums of ~20 products)."""
    for index, (got, wanted) in enumerate(zip(torch.utils._pytree.tree_leaves(actual),
                                              torch.utils._pytree.tree_leaves(expected), strict=True)):
        assert got.shape == wanted.shape, f"{what}[{index}]: shape {got.shape} != {wanted.shape}"
        scale = wanted.abs().max().item()
        assert scale > 0, f"{what}[{index}]: the yardstick is all zero, the test would prove nothing"
        error = (got - wanted).abs().max().item()
        assert error <= 64 * torch.finfo(torch.float64).eps * scale, \
            f"{what}[{index}]: off by {error:.3e} (max |taps| {scale:.3e})"


def test_jvp_and_dual_numbers_equal_the_taps_backend():
    from involution.torch import taps

    primals, tangents, function = transform_inputs()
    expected = torch.func.jvp(function(taps), primals, tangents)
    assert_trees_close(torch.func.jvp(function(torch_ops), primals, tangents), expected, "torch.func.jvp")
    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():
        out = function(torch_ops)(*(forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)))
        tangent = forward_ad.unpack_dual(out).tangent
    assert tangent is not None, "dual numbers: the fast op dropped the tangent"
    assert_trees_close(tangent, expected[1], "forward_ad dual tangent")


@pytest.mark.parametrize("transform", ["jacfwd", "jacrev", "hessian", "grad", "jvp_of_grad"])
def test_torch_func_transforms_equal_the_taps_backend(transform):
    from involution.torch import taps

    primals, tangents, function = transform_inputs()
    scalar = {name: (lambda x, kernel, f=function(backend): f(x, kernel).square().sum())
              for name, backend in (("fast", torch_ops), ("taps", taps))}
    argnums = (0, 1)
    transforms = {
        "jacfwd": lambda name: torch.func.jacfwd(function(torch_ops if name == "fast" else taps), argnums)(*primals),
        "jacrev": lambda name: torch.func.jacrev(function(torch_ops if name == "fast" else taps), argnums)(*primals),
        "hessian": lambda name: torch.func.hessian(scalar[name], argnums)(*primals),
        "grad": lambda name: torch.func.grad(scalar[name], argnums)(*primals),
        "jvp_of_grad": lambda name: torch.func.jvp(torch.func.grad(scalar[name], argnums), primals, tangents),
    }
    assert_trees_close(transforms[transform]("fast"), transforms[transform]("taps"), transform)


@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (1, 2)], ids=["x", "kernel", "both-inner"])
def test_vmap_uses_the_batching_rule_and_equals_a_loop(in_dims):
    from torch._C._functorch import _is_vmap_fallback_enabled, _set_vmap_fallback_enabled

    (x, kernel), _, function = transform_inputs()
    stacked = [torch.stack([tensor, -2 * tensor.flip(0)], dimension) if dimension is not None else tensor
               for tensor, dimension in zip((x, kernel), in_dims)]
    enabled = _is_vmap_fallback_enabled()
    _set_vmap_fallback_enabled(False)  # torch's slow per-sample loop: without a batching rule, vmap fails here
    try:
        got = torch.vmap(function(torch_ops), in_dims=in_dims)(*stacked)
    finally:
        _set_vmap_fallback_enabled(enabled)
    loop = torch.stack([function(torch_ops)(*(tensor.select(dimension, index) if dimension is not None else tensor
                                             for tensor, dimension in zip(stacked, in_dims))) for index in range(2)])
    assert_trees_close(got, loop, "vmap")


def test_gradcheck_in_forward_mode_batched_and_forward_over_reverse():
    x, kernel, stride, padding, dilation = random_call(((1, 2, 4, 3), (1, 1, 2, 2, 3, 3), (2, 1), (1, 1), (1, 2)))
    x.requires_grad_(), kernel.requires_grad_()
    function = lambda x, kernel: torch_ops.involution2d(x, kernel, stride, padding, dilation)  # noqa: E731
    assert torch.autograd.gradcheck(function, (x, kernel), check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(function, (x, kernel), check_fwd_over_rev=True, check_batched_grad=True)


def test_opcheck_passes_on_the_registered_op():
    x, kernel, *_ = random_call(CALLS[0])
    torch.library.opcheck(torch_ops.involution2d_op, (x.requires_grad_(), kernel.requires_grad_(), [1, 1], [1, 1],
                                                      [1, 1]))


@pytest.mark.parametrize("first_call", ["eager", "compiled"])
def test_front_door_compiles_to_one_graph(first_call):
    """Also when the compiled function makes the front door's very first call (a fresh process): the backend is then
    resolved while Dynamo traces (an import statement, which it executes; the registry's importlib it refuses)."""
    script = textwrap.dedent(f"""
        import torch, involution
        x, kernel = torch.randn(2, 6, 7, 5, dtype=torch.float64), torch.randn(2, 2, 3, 3, 4, 3, dtype=torch.float64)
        function = lambda x, kernel: involution.involution2d(x, kernel, 2, 1, 1).relu()
        expected = function(x, kernel) if {first_call!r} == "eager" else None
        got = torch.compile(function, fullgraph=True, backend="aot_eager")(x, kernel)
        expected = function(x, kernel) if expected is None else expected
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        print("one graph")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "one graph" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
