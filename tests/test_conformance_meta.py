"""Meta-tests of the conformance suite: it fails each deliberately broken implementation and passes the reference."""
import json
from types import SimpleNamespace

import pytest

from involution.cli import main
from involution.conformance import broken
from involution.conformance.adapters import official_naive
from involution.conformance.runner import FAIL, PASS, UNSUPPORTED, run_suite, write_report
from involution.spec import check_involution2d

EXAMPLES = 20
PROPERTIES = {
    "forward_matches_oracle", "noncontiguous_matches_contiguous", "batched_equals_per_sample",
    "backward_matches_autograd", "backward_matches_finite_differences", "linear_in_x", "linear_in_kernel",
    "constant_kernel_equals_depthwise_conv2d", "one_hot_kernel_shifts_input", "forward_rejects_invalid_input",
    "backward_rejects_invalid_input",
}


def _validate_then_decline(x, kernel, stride=1, padding=0, dilation=1):
    check_involution2d(x, kernel, stride, padding, dilation)
    raise NotImplementedError("this implementation declines every valid case")


# Implementations for ``--impl test_conformance_meta:NAME`` (this module is importable while pytest runs it).
official_without_limits = SimpleNamespace(involution2d=official_naive.involution2d)
declines_everything = SimpleNamespace(involution2d=_validate_then_decline)


@pytest.mark.parametrize("name", sorted(broken.CAUGHT_BY))
def test_suite_catches_broken_implementation(name):
    properties = broken.CAUGHT_BY[name]
    result = run_suite(impls=[f"involution.conformance.broken:{name}"], max_examples=EXAMPLES, properties=properties)
    cells = {prop: result.matrix[prop][f"involution.conformance.broken:{name}"] for prop in properties}
    assert all(value == FAIL for value in cells.values()), f"{name}: every listed property should fail, got {cells}"
    assert result.failed


def test_reference_passes_every_property(tmp_path):
    result = run_suite(backends=["reference"], max_examples=EXAMPLES)
    assert set(result.properties) == PROPERTIES, f"properties run: {result.properties}"
    assert all(row["reference"] == PASS for row in result.matrix.values()), result.format_matrix()
    assert not result.failed
    write_report(result, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["matrix"] == result.matrix and report["failed"] is False
    assert report["implementations"]["reference"]["available"] is True
    assert {r["property"] for r in report["results"]} == PROPERTIES


def test_unsupported_cases_are_skips_not_failures():
    declined = run_suite(impls=["test_conformance_meta:declines_everything"], max_examples=5,
                         properties=["forward_matches_oracle", "linear_in_x", "forward_rejects_invalid_input"])
    column = {prop: row["test_conformance_meta:declines_everything"] for prop, row in declined.matrix.items()}
    assert column == {"forward_matches_oracle": UNSUPPORTED, "linear_in_x": UNSUPPORTED,
                      "forward_rejects_invalid_input": PASS}, column
    assert not declined.failed

    official = run_suite(impls=["test_conformance_meta:official_without_limits"], max_examples=EXAMPLES,
                         properties=["forward_matches_oracle"])
    assert official.matrix["forward_matches_oracle"]["test_conformance_meta:official_without_limits"] == PASS
    assert sum(o.unsupported for o in official.outcomes) > 0, "no drawn case was outside the official code's reach"


def test_cli_exit_codes_and_report(tmp_path, capsys):
    report = tmp_path / "report.json"
    code = main(["conformance", "--impl", "involution.conformance.broken:padding_off_by_one",
                 "--property", "forward_matches_oracle", "--max-examples", "10", "--report", str(report)])
    assert code == 1
    assert "forward_matches_oracle" in capsys.readouterr().out
    assert json.loads(report.read_text())["failed"] is True
    assert main(["conformance", "--impl", "no_such_module_for_conformance"]) == 2
    assert main(["conformance", "--backend", "no-such-backend"]) == 2
