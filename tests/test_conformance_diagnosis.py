"""The conformance suite diagnoses: it names the slip a broken implementation commits (conformance/diagnosis.py),
shows the input of every failure, and judges policy as policy (the strict tier, ill-posed answers worded as such).
"""
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from involution.conformance import broken, verdict
from involution.conformance.diagnosis import DEFINITION, SLIPS, diagnose, failure_entries
from involution.conformance.limits import Limits
from involution.conformance.runner import run_suite, write_report
from involution.conformance.strategies import geometries, random_arrays
from involution.reference import involution2d, involution2d_backward
from involution.spec import check_geometry

SMALL = Limits(max_kernel=3, max_stride=3, max_dilation=2, max_extent=4, max_groups=3, max_group_channels=3,
               max_batch=2, max_work=4000)
EXAMPLES = 10


def answers(implementation, geometry, dtype, seed):
    """``(results, x, kernel, grad_out)``: what ``implementation`` answers on random inputs of ``geometry``."""
    x, kernel = random_arrays(geometry, dtype, seed)
    grad_out = np.random.default_rng(seed + 1).standard_normal(geometry.out_shape).astype(dtype)
    params = geometry.hyper_parameters
    results = {"out": implementation.involution2d(x, kernel, *params)}
    results["grad_x"], results["grad_kernel"] = implementation.involution2d_backward(grad_out, x, kernel, *params)
    return results, x, kernel, grad_out


def named(sentences) -> set:
    """The slips a diagnosis names."""
    return {slip.name for slip in SLIPS for sentence in sentences
            if f"match {slip.name}:" in sentence or f"matches {slip.name}:" in sentence
            or f"{slip.name} (" in sentence}


def changes(slip, geometry, results, x, kernel, grad_out) -> bool:
    """Whether ``slip`` changes any answer on this case (computed in float64)."""
    shapes = {key: value.shape for key, value in results.items()}
    if not slip.applies(geometry, shapes):
        return False
    arrays = (x.astype(np.float64), kernel.astype(np.float64), geometry, grad_out.astype(np.float64))
    right, slipped = DEFINITION.results(*arrays), slip.wrap(DEFINITION, geometry, shapes).results(*arrays)
    return any(right[key].shape != slipped[key].shape or not np.allclose(right[key], slipped[key]) for key in right)


def reproduces(slip, geometry, results, x, kernel, grad_out) -> bool:
    """Whether ``slip`` alone reproduces every wrong answer in ``results`` (float64, loose tolerance)."""
    arrays = (x.astype(np.float64), kernel.astype(np.float64), geometry, grad_out.astype(np.float64))
    shapes = {key: value.shape for key, value in results.items()}
    right, slipped = DEFINITION.results(*arrays), slip.wrap(DEFINITION, geometry, shapes).results(*arrays)
    wrong = [key for key in results if results[key].shape != right[key].shape
             or not np.allclose(results[key], right[key], rtol=1e-4, atol=1e-4)]
    return all(results[key].shape == slipped[key].shape and np.allclose(results[key], slipped[key], rtol=1e-4,
                                                                        atol=1e-4) for key in wrong)


def test_every_slip_of_the_catalogue_has_a_broken_implementation():
    assert {slip.name for slip in SLIPS} == {name for names in broken.NAMED_SLIPS.values() for name in names}


@pytest.mark.parametrize("name", sorted(broken.NAMED_SLIPS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(geometry=geometries(SMALL), dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_diagnosis_names_exactly_the_slip_committed(name, geometry, dtype, seed):
    """On every geometry where the broken implementation's answer is wrong, the diagnosis names its slips (each of
    them that changes the answer there, for a port with two at once), and another only where that one gives the
    very same answer (a 1-wide input padded on one side looks flipped)."""
    results, x, kernel, grad_out = answers(getattr(broken, name), geometry, dtype, seed)
    sentences = diagnose(results, x, kernel, geometry, grad_out)
    assume(sentences)  # the slips do not change the answer on this geometry
    # of two slips, only those that change the answer on this case (a 1x1 kernel cannot be flipped)
    visible = {slip.name for slip in SLIPS if slip.name in broken.NAMED_SLIPS[name]
               and changes(slip, geometry, results, x, kernel, grad_out)}
    assert named(sentences) >= visible, (geometry, dtype, seed, sentences)
    for extra in named(sentences) - visible:  # another slip named: only where it gives the very same answer
        slip = next(slip for slip in SLIPS if slip.name == extra)
        assert reproduces(slip, geometry, results, x, kernel, grad_out), (extra, geometry, dtype, seed, sentences)


def test_two_slips_in_one_quantity_are_both_named_on_a_fixed_case():
    geometry = check_geometry((2, 4, 7, 8), (2, 2, 3, 3, 4, 4), 2, 1, 1)
    sentences = diagnose(*answers(broken.interleaved_groups_and_flipped_taps, geometry, "float64", 0)[:3], geometry)
    assert sentences == [sentences[0]] and sentences[0].startswith(
        "forward matches two slips at once: interleaved groups (channel c reads kernel group c % G;"), sentences
    assert "flipped taps (tap (u, v) reads kernel[b, g, Kh-1-u, Kw-1-v]" in sentences[0], sentences


@settings(max_examples=EXAMPLES, deadline=None)
@given(geometry=geometries(SMALL), dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_correct_answers_get_no_diagnosis(geometry, dtype, seed):
    implementation = type("Reference", (), {"involution2d": staticmethod(involution2d),
                                            "involution2d_backward": staticmethod(involution2d_backward)})
    results, x, kernel, grad_out = answers(implementation, geometry, dtype, seed)
    assert diagnose(results, x, kernel, geometry, grad_out) == []


def test_a_slip_outside_the_catalogue_names_the_wrong_quantity():
    geometry = check_geometry((2, 4, 7, 8), (2, 2, 3, 3, 7, 8), 1, 1, 1)
    results, x, kernel, grad_out = answers(broken.padding_off_by_one, geometry, "float64", 3)
    assert diagnose(results, x, kernel, geometry, grad_out) == \
        ["no known slip reproduces forward (forward wrong, grad_x right, grad_kernel right)"]
    results.pop("out")
    results["grad_x"] = results["grad_x"] + 1
    assert diagnose(results, x, kernel, geometry, grad_out) == \
        ["no known slip reproduces grad_x (grad_x wrong, grad_kernel right)"]


def test_failure_entries_unpack_exception_groups_and_keep_the_drawn_input():
    first, second = ZeroDivisionError("division by zero"), AssertionError("forward vs oracle: 3 of 8 elements off")
    first.add_note("Draw 1 (case): Case(x (1, 2, 3, 3) float32 contiguous, stride=(2, 2))")
    second.add_note("Draw 1 (case): Case(x (2, 2, 5, 5) float64 contiguous, stride=(1, 1))")
    second.add_note("Draw 2: 17")  # an unlabelled draw (an index): not shown
    second.add_note("Draw 3 (infinite weight on padded tap (0, 0, 0, 1, 0, 0)): inf")
    entries = failure_entries(ExceptionGroup("Hypothesis found 2 distinct failures.", [first, second]))
    assert [entry["message"] for entry in entries] == [
        "ZeroDivisionError: division by zero; drawn case: Case(x (1, 2, 3, 3) float32 contiguous, stride=(2, 2))",
        "AssertionError: forward vs oracle: 3 of 8 elements off; drawn case: Case(x (2, 2, 5, 5) float64 "
        "contiguous, stride=(1, 1)); infinite weight on padded tap (0, 0, 0, 1, 0, 0): inf"]


def spec(name):
    return f"involution.conformance.broken:{name}"


def test_suite_names_the_slips_in_matrix_verdict_and_report(tmp_path):
    """Two ports, each with two slips at once (in one quantity; one in each gradient): the matrix, the verdict
    line and the JSON name all four."""
    specs = [spec("interleaved_groups_and_flipped_taps"), spec("two_backward_slips")]
    result = run_suite(impls=specs, max_examples=EXAMPLES, shrink=False, timeout=10,
                       properties=["core_cases_computed", "forward_matches_oracle", "backward_matches_autograd"])
    assert result.exit_code == 1
    text = result.format_matrix()
    flat = " ".join(text.split())
    for words in ("matches two slips at once: interleaved groups", "and flipped taps",
                  "grad_x matches stride ignored in grad_x", "grad_kernel matches grad_kernel from the first channel"):
        assert words in flat, text
    reasons = " ".join(" ".join(result.verdicts[name].reasons) for name in specs)
    assert "forward matches interleaved groups + flipped taps" in reasons, reasons
    assert "grad_x matches stride ignored in grad_x" in reasons, reasons
    assert "grad_kernel matches grad_kernel from the first channel" in reasons, reasons
    write_report(result, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    diagnoses = [failure["diagnosis"] for outcome in report["results"] for failure in outcome["failures"]]
    assert any("grad_kernel matches grad_kernel from the first channel" in text for text in diagnoses), diagnoses


def test_an_exception_on_valid_input_shows_the_input():
    result = run_suite(impls=[spec("raises_on_dilation")], max_examples=EXAMPLES, shrink=True, timeout=10,
                       properties=["forward_matches_oracle"])
    detail = next(o.detail for o in result.outcomes if o.outcome == "failed")
    assert detail.startswith("ZeroDivisionError: ") and "drawn case: Case(x (" in detail, detail
    # the input that raised, shrunk: one pixel, and a dilation of 2 (the smallest that raises)
    assert "Case(x (1, 1, 1, 1) " in detail and re.search(r"dilation=\((2, 2|2, 1|1, 2)\)", detail), detail


def test_skipping_padded_taps_is_a_policy_of_the_strict_tier():
    """A bounds-checked gather (the paper's CUDA kernel's way) is conformant without --strict, and fails with it;
    skipping zero-weight taps (a NaN read there is lost) stays a failure of the correct tier."""
    properties = ["core_cases_computed", "nonfinite_follows_definition", "padded_inf_times_zero_is_nan"]
    lax = run_suite(impls=[spec("padded_taps_skipped"), spec("zero_taps_skipped")], max_examples=20, shrink=False,
                    properties=properties, timeout=10)
    column = {prop: lax.matrix[prop][spec("padded_taps_skipped")] for prop in properties}
    assert column == {"core_cases_computed": verdict.PASS, "nonfinite_follows_definition": verdict.PASS,
                      "padded_inf_times_zero_is_nan": verdict.FAIL}, lax.format_matrix()
    assert lax.verdicts[spec("padded_taps_skipped")].verdict == verdict.CONFORMANT
    assert lax.matrix["nonfinite_follows_definition"][spec("zero_taps_skipped")] == verdict.FAIL
    strict = run_suite(impls=[spec("padded_taps_skipped")], max_examples=20, shrink=False, properties=properties,
                       timeout=10, strict=True)
    assert strict.exit_code == 1, strict.format_matrix()
    assert "infinite weight on padded tap" in strict.format_matrix()


def test_answers_to_ill_posed_input_are_worded_as_such():
    result = run_suite(impls=[spec("no_validation")], max_examples=3, shrink=False, timeout=10,
                       properties=["core_cases_computed", "forward_matches_oracle", "forward_rejects_ill_posed_input"])
    assert result.exit_code == 1
    reasons = result.verdicts[spec("no_validation")].reasons
    assert reasons[0].startswith("values right; answers 9 ill-posed kinds (forward: 9 of 18 ill-posed kinds "
                                 "answered: kernel spatial size 4x6 is not the output size 5x6; "), reasons
    assert "kernel spatial size 1x1 (broadcast over positions), output 5x6" in reasons[0], reasons
    assert "kernel batch 1, x batch 2" in reasons[0], reasons  # both broadcasts are ill-posed
    assert "9 of 18 ill-posed kinds answered" in result.format_matrix()


def test_empty_batch_backward_that_raises_is_a_rejection(tmp_path, monkeypatch):
    (tmp_path / "empty_backward_raises.py").write_text(
        "from involution.reference import involution2d, involution2d_backward as reference_backward\n\n\n"
        "def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1):\n"
        "    if len(x) == 0:\n"
        "        raise ValueError('x: an empty batch has no gradient here')\n"
        "    return reference_backward(grad_out, x, kernel, stride, padding, dilation)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_suite(impls=["empty_backward_raises"], properties=["empty_batch"], timeout=10)
    assert result.matrix["empty_batch"]["empty_backward_raises"] == verdict.REJECTED, result.format_matrix()


def test_torch_runtime_error_naming_the_argument_meets_the_strict_tier(tmp_path, monkeypatch):
    (tmp_path / "torch_runtime_errors.py").write_text(
        "from involution.conformance import oracle\n\n\n"
        "def involution2d(x, kernel, stride=1, padding=0, dilation=1):\n"
        "    try:\n"
        "        return oracle.involution2d(x, kernel, stride, padding, dilation)\n"
        "    except (ValueError, TypeError) as error:  # as torch's own checks raise them\n"
        "        raise RuntimeError(str(error)) from None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    properties = ["forward_errors_name_the_argument", "backward_rejects_ill_posed_input"]
    result = run_suite(impls=["torch_runtime_errors"], framework="torch", properties=properties, strict=True,
                       timeout=20)
    assert result.matrix["forward_errors_name_the_argument"]["torch_runtime_errors"] == verdict.PASS, \
        result.format_matrix()
    # grad_out is met by autograd and the adapter, not by the port: those cases are not the port's answers
    skipped = [o.detail for o in result.outcomes if o.property == "backward_rejects_ill_posed_input"
               and o.outcome == "skipped"]
    assert len(skipped) == 3 and all(d.startswith("n/a: ") for d in skipped), skipped


def test_opcheck_reports_each_check_of_a_registered_op(tmp_path, monkeypatch):
    """A torch.library op whose fake kernel gives the wrong shape: the capability fails naming test_faketensor,
    and says which checks succeeded."""
    (tmp_path / "wrong_fake_kernel.py").write_text(
        "import torch\n\nfrom involution.conformance import oracle\n\n\n"
        "@torch.library.custom_op('conformance_test::involution2d', mutates_args=())\n"
        "def involution2d(x: torch.Tensor, kernel: torch.Tensor, stride: list[int], padding: list[int],\n"
        "                 dilation: list[int]) -> torch.Tensor:\n"
        "    return oracle.involution2d(x, kernel, tuple(stride), tuple(padding), tuple(dilation)).clone()\n\n\n"
        "@involution2d.register_fake\n"
        "def _(x, kernel, stride, padding, dilation):\n"
        "    return x.new_empty(x.shape[0], x.shape[1], 1, 1)  # the output size forgotten\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_suite(impls=["wrong_fake_kernel"], framework="torch", properties=["torch_library_opcheck"],
                       timeout=60)
    assert result.matrix["torch_library_opcheck"]["wrong_fake_kernel"] == verdict.FAIL, result.format_matrix()
    detail = next(o.detail for o in result.outcomes if o.outcome == "failed")
    assert "torch.library.opcheck of conformance_test::involution2d: test_schema SUCCESS" in detail, detail
    assert "test_faketensor failed: " in detail, detail
