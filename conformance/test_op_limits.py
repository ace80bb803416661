"""Declared limits are honest: outside them an implementation declines or answers right, never wrongly.

``CONFORMANCE_LIMITS`` narrows the random draws of every other property. Here the suite draws from its own
limits, keeps only cases that the declared limits exclude, and calls the implementation: it must decline
(``NotImplementedError``, ``ValueError`` or ``TypeError``) or answer within the oracle's bound; a wrong answer
or another exception is a failure. An implementation that declares nothing narrower than the suite's draws is
``n/a`` here.
"""
import pytest
from hypothesis import assume

from involution.conformance.backends import InputModified
from involution.conformance.diagnosis import assert_matches_oracle
from involution.conformance.limits import DTYPES, Limits, excluded_by, narrowed_by
from involution.conformance.strategies import cases

DECLINES = (NotImplementedError, ValueError, TypeError)


def test_outside_declared_limits_declined_or_right(impl, prove):
    """Cases the declared limits exclude (inside the suite's own draws): declined, or the oracle's answer."""
    geometric = {name: value for name, value in impl.declared.items() if name not in ("max_examples",)}
    if not narrowed_by(geometric):
        pytest.skip("n/a: no declared limit narrower than the suite's draws")

    def check(data):
        case = data.draw(cases(Limits(), dtypes=DTYPES), label="case outside the declared limits")
        excluded = excluded_by(geometric, case.geometry, case.dtype)
        assume(excluded)
        try:
            out = prove.forward(case.x, case.kernel, *case.params)
        except InputModified:
            raise
        except DECLINES:
            return  # declined, as declared
        assert_matches_oracle({"out": out}, case.x, case.kernel, case.geometry,
                              f"{case} (outside the declared limits: {', '.join(excluded)}; answered, so judged)",
                              labels={"out": "forward outside the declared limits vs oracle"})

    prove(check, declines=())
