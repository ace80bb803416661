"""Gradients: each analytic backward equals autograd through the oracle and float64 finite differences."""
import numpy as np

from involution.conformance.diagnosis import assert_matches_oracle
from involution.conformance.strategies import cases
from involution.conformance.tolerances import assert_within, finite_difference_bound, magnitudes
from involution.reference.gradcheck import involution_gradients_fd

FD_STEP = 1e-6


def random_grad_out(case) -> np.ndarray:
    """An upstream gradient of the output's shape and the case's dtype, reproducible from the case's seed."""
    rng = np.random.default_rng(case.seed + 1)
    return rng.standard_normal(case.geometry.out_shape).astype(case.dtype)


def test_backward_matches_autograd(impl, prove):
    """``(grad_x, grad_kernel)`` equal autograd through the float64 oracle within the dtype bound; inputs untouched."""
    prove.require_backward()

    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        grad_out = random_grad_out(case)
        grad_x, grad_kernel = prove.backward(grad_out, case.x, case.kernel, *case.params)  # inputs: every call
        assert_matches_oracle({"grad_x": grad_x, "grad_kernel": grad_kernel}, case.x, case.kernel, case.geometry,
                              case, grad_out, labels={"grad_x": "grad_x vs autograd",
                                                      "grad_kernel": "grad_kernel vs autograd"})

    prove(check)


def test_backward_matches_finite_differences(impl, prove):
    """float64 central differences of the implementation's own forward equal its analytic backward."""
    prove.require_backward()

    def check(data):
        case = data.draw(cases(impl.limits, dtypes=("float64",), max_elements=impl.limits.max_fd_elements),
                         label="case")
        grad_out = random_grad_out(case)
        grad_x, grad_kernel = prove.backward(grad_out, case.x, case.kernel, *case.params)
        fd_x, fd_kernel = involution_gradients_fd(prove.forward, grad_out, case.x, case.kernel, *case.params,
                                                  eps=FD_STEP)
        out_magnitude, magnitude_x, magnitude_kernel = magnitudes(case.x, case.kernel, case.geometry, grad_out)
        loss_l1 = float(np.sum(np.abs(grad_out) * out_magnitude))
        for name, analytic, numeric, magnitude, values in (
            ("grad_x", grad_x, fd_x, magnitude_x, case.x),
            ("grad_kernel", grad_kernel, fd_kernel, magnitude_kernel, case.kernel),
        ):
            tolerance = finite_difference_bound(case.geometry, magnitude, loss_l1, grad_out.size,
                                                float(np.abs(values).max()), FD_STEP)
            assert_within(analytic, numeric, tolerance, f"{name} vs finite differences", case)

    prove(check, single_threaded=True)
