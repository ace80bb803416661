"""Forward values: every implementation equals the PyTorch oracle, whatever the layout or batching."""
import numpy as np

from involution.conformance.adapters import torch_oracle
from involution.conformance.diagnosis import assert_matches_oracle
from involution.conformance.strategies import LAYOUTS, cases
from involution.conformance.tolerances import assert_within, bound, forward_terms, magnitudes


def oracle_bound(case):
    """The oracle's float64 output for ``case`` and the elementwise tolerance of a ``case.dtype`` result."""
    expected = torch_oracle.involution2d(case.x.astype(np.float64), case.kernel.astype(np.float64), *case.params)
    return expected, bound(forward_terms(case.geometry), case.dtype, magnitudes(case.x, case.kernel, case.geometry))


def test_forward_matches_oracle(impl, prove):
    """``involution2d`` equals the oracle within the dtype's bound, returns ``x``'s dtype, leaves inputs alone."""
    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        out = prove.forward(case.x, case.kernel, *case.params)  # inputs unmodified: checked on every call
        assert isinstance(out, np.ndarray), f"forward returned {out!r:.80}, not an array; {case}"
        assert out.dtype == case.dtype, f"forward returned dtype {out.dtype} for {case.dtype} inputs; {case}"
        assert_matches_oracle({"out": out}, case.x, case.kernel, case.geometry, case,
                              labels={"out": "forward vs oracle"})

    prove(check)


def test_noncontiguous_matches_contiguous(impl, prove):
    """Sliced, reversed, channels-last and Fortran-ordered inputs give the contiguous result."""
    def check(data):
        case = data.draw(cases(impl.limits, layouts=LAYOUTS[1:]), label="case")
        out = prove.forward(case.x, case.kernel, *case.params)
        contiguous = prove.forward(np.ascontiguousarray(case.x), np.ascontiguousarray(case.kernel), *case.params)
        expected, tolerance = oracle_bound(case)
        assert_within(out, contiguous, tolerance, f"{case.layout} vs contiguous", case)
        assert_within(out, expected, tolerance, f"{case.layout} vs oracle", case)

    prove(check)


def test_batched_equals_per_sample(impl, prove):
    """The batch is independent samples: the batched call equals the per-sample calls stacked."""
    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        out = prove.forward(case.x, case.kernel, *case.params)
        per_sample = np.concatenate([
            prove.forward(case.x[b:b + 1], case.kernel[b:b + 1], *case.params) for b in range(case.geometry.batch)
        ])
        _, tolerance = oracle_bound(case)
        assert_within(out, per_sample, tolerance, "batched vs per-sample", case)

    prove(check)
