"""The core cases: calls every implementation must compute, whatever limits it declares.

Stride 1 and 2, G = 1 and G > 1, 1 to 16 channels per group, K = 1, 3 and 7, odd sizes, H != W, zero and "same"
padding, float32 and float64. Each is called even outside the implementation's declared limits: a wrong answer
fails (the correct tier); declining it (``NotImplementedError``, or any exception outside the declared limits),
or declaring limits that exclude it, makes the property "limited", and the verdict "conformant only within
declared limits".
"""
import pytest

from involution.conformance.backends import InputModified
from involution.conformance.core import CORE, core_case, describe
from involution.conformance.diagnosis import CALL_NOTE, PREFIX, SEPARATOR, assert_matches_oracle, split
from involution.conformance.limits import excluded_by


def check_core_case(impl, entry) -> tuple[str, str] | None:
    """Compute one core case (forward, and backward if the implementation has one) and check it against the
    oracle. Returns ``("declined", why)`` when it raised instead of answering, ``("excluded", why)`` when it
    answered right but its declared limits exclude the case, or ``None``."""
    geometry, dtype, x, kernel, grad_out = core_case(entry)
    excluded = excluded_by(impl.declared, geometry, dtype)
    declines = Exception if excluded else NotImplementedError
    params = geometry.hyper_parameters
    where = f"core case {describe(entry)}"
    try:
        out = impl.forward(x, kernel, *params)
        grads = impl.backward(grad_out, x, kernel, *params) if impl.backward is not None else None
    except InputModified as error:  # a failure, counted with the wrong answers
        raise InputModified(f"{error}; {where}") from None
    except declines as error:
        because = f" (declared limits exclude it: {', '.join(excluded)})" if excluded else ""
        return "declined", f"{where}: {type(error).__name__}: {error}{because}"
    except Exception as error:  # raised on a valid case it must compute: a failure that shows its input
        error.add_note(CALL_NOTE + where)
        raise
    results = {"out": out} if grads is None else {"out": out, "grad_x": grads[0], "grad_kernel": grads[1]}
    assert_matches_oracle(results, x, kernel, geometry, where, None if grads is None else grad_out)
    return ("excluded", f"{where}: computed and right, but declared limits exclude it: {', '.join(excluded)}") \
        if excluded else None


def test_core_cases_computed(impl, request):
    """Every core case is computed and right; any declined or excluded one makes the result "limited".

    Every core case is checked before a wrong one fails the test: the failure shows the first and the diagnoses
    of all (a slip such as interleaved groups shows only where 1 < G < C)."""
    results, wrong = [], []
    for entry in CORE:
        try:
            result = check_core_case(impl, entry)
        except AssertionError as error:
            wrong.append(split(str(error)))
            continue
        if result:
            results.append(result)
    if wrong:
        diagnoses = dict.fromkeys(sentence for _, found in wrong if found for sentence in found.split(SEPARATOR))
        raise AssertionError(f"{wrong[0][0]} ({len(wrong)} of {len(CORE)} core cases wrong)"
                             + (f"\n{PREFIX}{SEPARATOR.join(diagnoses)}" if diagnoses else ""))
    declined = [why for kind, why in results if kind == "declined"]
    request.node.user_properties.append(("declined", len(declined)))
    if results:
        counts = [f"{len(declined)} of {len(CORE)} core cases declined"] if declined else []
        if len(results) > len(declined):
            counts.append(f"{len(results) - len(declined)} computed but excluded by the declared limits")
        pytest.skip(f"limited: {', '.join(counts)}; " + "; ".join(why for _, why in results))
