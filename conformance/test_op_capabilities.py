"""Capabilities (informational): input kinds the definition can answer but an implementation may decline.

float16, bfloat16 (torch only: NumPy has none), an empty batch, integer dtypes and mixed dtypes. Each is either
rejected with an exception ("rejected", not a failure) or answered; an answer must match the float64 oracle
within the tolerance of its dtype, and a wrong answer is a failure of the correct tier. A fixed probe call comes
first: rejected there, the property is "rejected" at once; answered, hypothesis draws more cases.
"""

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from involution.conformance.adapters import torch_oracle
from involution.conformance.backends import InputModified
from involution.conformance.channel import clean_text
from involution.conformance.strategies import geometries
from involution.conformance.tolerances import assert_within, forward_terms, magnitudes
from involution.conformance.worker import ImplementationDied, run_opcheck
from involution.spec import check_geometry

PROBE = check_geometry((2, 4, 5, 6), (2, 2, 3, 3, 5, 6), 1, 1, 1)


def tolerance(geometry, answer_dtype, magnitude, input_eps: float):
    """``(Kh*Kw + 2) * eps * magnitude``, ``eps`` the coarser of the inputs' and the answer's (0 for integers), plus
    the answer dtype's smallest normal number, as ``tolerances.bound`` (a float16 answer near zero is subnormal:
    its spacing there, 6e-8, is absolute, not relative)."""
    floating = np.issubdtype(answer_dtype, np.floating)
    answer_eps = float(np.finfo(answer_dtype).eps) if floating else 0.0
    return (forward_terms(geometry) + 2) * max(input_eps, answer_eps) * magnitude + \
        (float(np.finfo(answer_dtype).tiny) if floating else 0.0)


def check_answer(out, geometry, x, kernel, input_eps: float, what: str) -> None:
    """``out`` is an array of the output's shape within the tolerance of the float64 oracle on ``x``, ``kernel``."""
    assert isinstance(out, np.ndarray), f"{what}: returned {type(out).__name__}, not an array; {geometry}"
    x64, kernel64 = x.astype(np.float64), kernel.astype(np.float64)
    expected = torch_oracle.involution2d(x64, kernel64, *geometry.hyper_parameters)
    limit = tolerance(geometry, out.dtype, magnitudes(x64, kernel64, geometry), input_eps)
    # The answer's dtype may differ from the inputs' here (its tolerance is the coarser eps); complex never.
    assert_within(out, expected, limit, f"{what} vs oracle", geometry, dtype=None)


def run_capability(impl, prove, make_inputs, check) -> None:
    """The probe call, then hypothesis draws; every exception counts as the capability being rejected."""
    probe = make_inputs(PROBE, 0)
    try:
        out = prove.impl.forward(*probe[:2], *PROBE.hyper_parameters, **probe[2])
    except InputModified:
        raise
    except Exception as error:  # rejecting an input kind is allowed; answering it wrongly is not
        pytest.skip(f"rejected: {type(error).__name__}: {error}")
    check(out, PROBE, *probe)

    def drawn(data):
        geometry = data.draw(geometries(impl.limits), label="geometry")
        inputs = make_inputs(geometry, data.draw(st.integers(0, 2**32 - 1), label="seed"))
        check(prove.forward(*inputs[:2], *geometry.hyper_parameters, **inputs[2]), geometry, *inputs)

    prove(drawn, declines=(Exception,), declined_label="rejected")


def normal_inputs(x_dtype, kernel_dtype):
    def make(geometry, seed):
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(geometry.x_shape).astype(x_dtype),
                rng.standard_normal(geometry.kernel_shape).astype(kernel_dtype), {})
    return make


def test_float16(impl, prove):
    def check(out, geometry, x, kernel, _):
        check_answer(out, geometry, x, kernel, float(np.finfo(np.float16).eps), "float16 forward")

    run_capability(impl, prove, normal_inputs(np.float16, np.float16), check)


def test_bfloat16(impl, prove):
    if impl.framework != "torch":
        pytest.skip("n/a: NumPy has no bfloat16")

    def make(geometry, seed):
        x, kernel, _ = normal_inputs(np.float32, np.float32)(geometry, seed)
        rounded = (torch.from_numpy(a).to(torch.bfloat16).float().numpy() for a in (x, kernel))
        return (*rounded, {"as_dtype": "bfloat16"})

    def check(out, geometry, x, kernel, _):
        check_answer(out, geometry, x, kernel, torch.finfo(torch.bfloat16).eps, "bfloat16 forward")

    run_capability(impl, prove, make, check)


def test_integer_dtypes(impl, prove):
    def make(geometry, seed):
        rng = np.random.default_rng(seed)
        return (rng.integers(-3, 4, geometry.x_shape), rng.integers(-3, 4, geometry.kernel_shape), {})

    def check(out, geometry, x, kernel, _):
        check_answer(out, geometry, x, kernel, 0.0, "int64 forward")

    run_capability(impl, prove, make, check)


def test_mixed_dtypes(impl, prove):
    def check(out, geometry, x, kernel, _):
        check_answer(out, geometry, x, kernel, float(np.finfo(np.float32).eps), "float32 x, float64 kernel forward")

    run_capability(impl, prove, normal_inputs(np.float32, np.float64), check)


def test_empty_batch(impl):
    """B = 0: the project's policy is an empty output (0, C, Ho, Wo), as ``torch.nn.functional.conv2d`` gives.

    Rejecting it (an exception from the forward, or from the backward after the forward answered) is allowed;
    a wrong answer fails."""
    g = PROBE
    x, kernel = np.zeros((0, *g.x_shape[1:])), np.zeros((0, *g.kernel_shape[1:]))
    try:
        out = impl.forward(x, kernel, *g.hyper_parameters)
    except Exception as error:  # rejecting an empty batch is allowed
        pytest.skip(f"rejected: {type(error).__name__}: {error}")
    expected = (0, *g.out_shape[1:])
    assert isinstance(out, np.ndarray) and out.shape == expected, \
        f"empty batch: returned {type(out).__name__} of shape {getattr(out, 'shape', None)}, expected {expected}"
    if impl.backward is not None:
        try:
            grads = impl.backward(np.zeros(expected), x, kernel, *g.hyper_parameters)
        except Exception as error:  # rejecting the empty batch in the backward is allowed too
            pytest.skip(f"rejected: the forward answers an empty batch, the backward raises "
                        f"{type(error).__name__}: {error}")
        shapes = [getattr(grad, "shape", None) for grad in grads]
        assert shapes == [x.shape, kernel.shape], f"empty batch backward: shapes {shapes}, expected " \
                                                  f"{[x.shape, kernel.shape]}"


def test_torch_library_opcheck(impl, request):
    """``torch.library.opcheck`` (schema, autograd registration, fake tensor, AOT dispatch) on the implementation's
    op registered through torch.library (``--framework torch``; see :mod:`~involution.conformance.opcheck`), run
    in a worker process under its guard. n/a for NumPy implementations and for torch ones without a registered op."""
    if impl.framework != "torch":
        pytest.skip("n/a: torch.library ops exist only under --framework torch")
    seconds = 4 * request.config.getoption("--timeout")
    # Under the worker's guard (conformance/worker.py): memory limit, output captured and capped, every process
    # it leaves killed, and the result through the channel as JSON (strings cleaned of escape codes).
    try:
        found = run_opcheck(impl.name, request.config.getoption("--device"), seconds,
                            request.config.getoption("--memory-limit"))
    except ImplementationDied as error:
        pytest.fail(str(error))
    if type(found.get("checks")) is not dict:
        pytest.fail(f"opcheck of {impl.name} sent a result of another form")
    if found.get("op") is None:
        pytest.skip(f"n/a: {impl.name} registers no op through torch.library")
    checks = {clean_text(test, 200): clean_text(str(result), 2000) for test, result in found["checks"].items()}
    failed = {test: result for test, result in checks.items() if result != "SUCCESS"}
    assert not failed, f"torch.library.opcheck of {clean_text(str(found['op']), 200)}: " + "; ".join(
        f"{test} {'SUCCESS' if test not in failed else 'failed: ' + failed[test]}" for test in checks)
