"""Meta-tests of the conformance suite: it rejects each deliberately broken implementation, passes correct ones
that make other policy choices, survives hangs and crashes, and refuses bad arguments before running anything.

Every implementation here runs through the worker-process path (``--impl``, or ``isolate=True``).
"""
import ast
import json
import random
from pathlib import Path

import pytest
from hypothesis import find, settings
from hypothesis.database import InMemoryExampleDatabase

from involution.cli import main
from involution.conformance import broken, verdict
from involution.conformance.runner import PROPERTY_FILES, WIDTH, run_suite, write_report
from involution.conformance.strategies import geometries

EXAMPLES = 10
BROKEN_EXAMPLES = 20  # enough for hypothesis to find each bug every time (1 < G < C, odd sizes, dilation)
# Broken implementations run without shrinking: the verdict is the same, only the printed example is not minimal.
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "docs" / "examples"
# What the report says when the implementation hangs or ends its process (on a stride-2 core case).
DETAILS = {"hangs": "timed out after 3 s in forward(x (2, 4, 7, 9) float32",
           "exits_early": "process exited with status 0 during forward(x (2, 4, 7, 9) float32"}


def test_tiers_list_every_property_once():
    """verdict.TIERS (the matrix rows, the --property names) is exactly the set of test functions."""
    functions = [node.name.removeprefix("test_") for path in PROPERTY_FILES
                 for node in ast.parse(Path(path).read_text()).body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    assert sorted(functions) == sorted(verdict.PROPERTIES), (sorted(functions), sorted(verdict.PROPERTIES))


@pytest.mark.parametrize("name", sorted(broken.CAUGHT_BY))
def test_suite_rejects_broken_implementation(name):
    expected_code, failing = broken.CAUGHT_BY[name]
    spec = f"involution.conformance.broken:{name}"
    properties = failing or ["core_cases_computed", "forward_matches_oracle", "forward_rejects_ill_posed_input"]
    result = run_suite(impls=[spec], max_examples=BROKEN_EXAMPLES, properties=properties, timeout=3, shrink=False)
    cells = {prop: result.matrix[prop][spec] for prop in properties}
    assert result.exit_code == expected_code, \
        f"{name}: exit {result.exit_code}, cells {cells}\n{result.format_matrix()}"
    assert all(cells[prop] == verdict.FAIL for prop in failing), f"{name}: every listed property should fail: {cells}"
    assert result.verdicts[spec].verdict != verdict.CONFORMANT
    if "core_cases_computed" in failing:  # the fixed cases name the slip every time, whatever the draws
        reasons = " ".join(result.verdicts[spec].reasons)
        assert all(slip in reasons for slip in broken.NAMED_SLIPS.get(name, [])), reasons
    if not failing:  # computes nothing: declines the core cases and every draw, still rejects ill-posed input
        assert cells == {"core_cases_computed": verdict.LIMITED, "forward_matches_oracle": verdict.UNSUPPORTED,
                         "forward_rejects_ill_posed_input": verdict.PASS}, cells
        assert result.verdicts[spec].verdict == verdict.TOO_LITTLE, result.format_matrix()  # never "conformant"
        # and the property stopped once as many draws as examples asked for were declined
        declined = [o.declined for o in result.outcomes if o.property == "forward_matches_oracle"]
        assert declined == [BROKEN_EXAMPLES], declined
    if name in DETAILS:
        detail = next(o.detail for o in result.outcomes if o.outcome == "failed")
        assert DETAILS[name] in detail, detail


@pytest.fixture
def example_database():
    """Hypothesis' example database for the suite's runs in this test, fresh and in memory (the ci profile has
    none: it is derandomized; the CLI's users have one, ``.hypothesis/`` in their working directory)."""
    previous = settings.get_current_profile_name()
    database = InMemoryExampleDatabase()
    settings.register_profile("conformance-example-database", settings(derandomize=False, database=database))
    settings.load_profile("conformance-example-database")
    yield database
    settings.load_profile(previous)


def test_failure_shows_the_shrunk_input_whatever_ran_before(example_database):
    """Hypothesis replays a saved failing example first and, if it still fails, reports it unshrunk. The suite
    keeps each implementation's examples apart and saves none from a run without shrinking, so the case shown
    is the shrunk one: for interleaved groups the smallest input where ``c % G`` and ``c // (C // G)`` differ
    (one pixel, C = 4 in G = 2 groups), for a padding slip one pixel."""
    def shown(name, shrink):
        result = run_suite(impls=[f"involution.conformance.broken:{name}"], max_examples=BROKEN_EXAMPLES,
                           properties=["forward_matches_oracle"], shrink=shrink, timeout=10)
        return next(o.detail for o in result.outcomes if o.outcome == "failed")

    first_drawn = shown("wrong_group_rule", shrink=False)  # 1 < G < C: never the smallest input
    assert "Case(x (1, 4, 1, 1) " not in first_drawn, first_drawn
    shrunk = shown("wrong_group_rule", shrink=True)
    assert "Case(x (1, 4, 1, 1) " in shrunk and "kernel (1, 2, 1, 1, 1, 1) " in shrunk, shrunk
    shrunk = shown("padding_off_by_one", shrink=True)
    assert "Case(x (1, 1, 1, 1) " in shrunk and "kernel (1, 1, 1, 1, 1, 1) " in shrunk, shrunk


@pytest.mark.parametrize("seed", range(3))
def test_group_channels_shrink_from_the_wide_range_to_the_narrow_one(seed):
    """Channels per group are drawn 1-4 or 5-16 (``strategies.group_channels``); a failure that needs two or more
    shrinks to two, whichever range it was first drawn in."""
    found = find(geometries(), lambda geometry: geometry.group_channels >= 2, random=random.Random(seed),
                 settings=settings(database=None, max_examples=50))
    assert found.group_channels == 2 and found.x_shape == (1, found.groups * 2, 1, 1), found


def test_self_consistency_holds_whatever_the_group_rule():
    """``c % G`` groups are a wrong answer, caught against the oracle; linearity, a property of the implementation
    against itself, still holds, and its tolerance must not assume contiguous groups (no misleading FAIL)."""
    spec = "involution.conformance.broken:wrong_group_rule"
    properties = ["linear_in_x", "linear_in_kernel", "forward_matches_oracle"]
    result = run_suite(impls=[spec], max_examples=BROKEN_EXAMPLES, properties=properties, shrink=False)
    cells = {prop: result.matrix[prop][spec] for prop in properties}
    assert cells == {"linear_in_x": verdict.PASS, "linear_in_kernel": verdict.PASS,
                     "forward_matches_oracle": verdict.FAIL}, result.format_matrix()


def test_narrow_declared_limits_are_printed_and_exit_3(tmp_path):
    """The official formula at op level: honest limits (it declines what it cannot express); the verdict is
    "conformant only within declared limits", with the limits in the matrix header and the report."""
    spec = "involution.conformance.adapters.official_naive"
    result = run_suite(impls=[spec], max_examples=EXAMPLES,
                       properties=["core_cases_computed", "forward_matches_oracle"])
    assert result.matrix["forward_matches_oracle"][spec] == verdict.PASS, result.format_matrix()
    assert sum(o.declined for o in result.outcomes) > 0, "no drawn case was outside the official code's reach"
    assert result.verdicts[spec].verdict == verdict.WITHIN_LIMITS and result.exit_code == 3
    text = result.format_matrix()
    assert "declared limits of involution.conformance.adapters.official_naive: square_only=True" in text, text
    write_report(result, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["implementations"][spec]["declared_limits"]["max_dilation"] == 1
    assert report["verdicts"][spec]["verdict"] == verdict.WITHIN_LIMITS and report["exit_code"] == 3


def test_lax_numpy_implementation_is_conformant(monkeypatch):
    """Correct code with other policies (float16 and integers computed, empty batch answered, plain messages)."""
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    result = run_suite(impls=["lax_numpy"], max_examples=EXAMPLES)
    column = {prop: row["lax_numpy"] for prop, row in result.matrix.items()}
    assert set(column) == set(verdict.PROPERTIES), column
    required = {p: c for p, c in column.items() if verdict.TIER_OF[p] == "correct"}
    # It declares no limits, so there is nothing outside them to check.
    assert required.pop("outside_declared_limits_declined_or_right") == verdict.NOT_APPLICABLE
    assert set(required.values()) == {verdict.PASS}, result.format_matrix()
    assert column["forward_errors_name_the_argument"] == verdict.FAIL  # its messages name nothing: not required
    assert [column[p] for p in ("float16", "integer_dtypes", "mixed_dtypes", "empty_batch")] == [verdict.ANSWERS] * 4
    assert result.verdicts["lax_numpy"].verdict == verdict.CONFORMANT and result.exit_code == 0
    strict = run_suite(impls=["lax_numpy"], properties=["core_cases_computed", "forward_errors_name_the_argument"],
                       strict=True)
    assert strict.exit_code == 1, strict.format_matrix()


def test_torch_unfold_example_is_conformant_through_the_cli(tmp_path, monkeypatch, capsys):
    """docs/examples/torch_unfold.py: tensors in and out, no backward (autograd), judged as the docs show."""
    monkeypatch.chdir(EXAMPLES_DIR)
    report = tmp_path / "report.json"
    code = main(["conformance", "--framework", "torch", "--impl", "torch_unfold", "--max-examples", str(EXAMPLES),
                 "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    # Every line fits the width but the one naming the report's path, which cannot wrap (pytest-xdist's tmp paths
    # are long).
    assert all(len(line) <= WIDTH for line in out[out.index("== conformance matrix"):].splitlines()
               if not line.startswith("report written to")), out
    data = json.loads(report.read_text())
    assert data["verdicts"]["torch_unfold"]["verdict"] == verdict.CONFORMANT
    assert data["matrix"]["backward_matches_autograd"]["torch_unfold"] == verdict.PASS
    assert data["matrix"]["bfloat16"]["torch_unfold"] in (verdict.ANSWERS, verdict.REJECTED)


def test_torch_framework_requires_tensors_back(tmp_path, monkeypatch):
    """Tensors in, right values out, but as NumPy arrays: not a torch implementation's answer."""
    (tmp_path / "answers_numpy.py").write_text(
        "from involution.reference import involution2d as reference\n\n\n"
        "def involution2d(x, kernel, stride=1, padding=0, dilation=1):\n"
        "    return reference(x.numpy(), kernel.numpy(), stride, padding, dilation)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_suite(impls=["answers_numpy"], framework="torch", max_examples=3, shrink=False,
                       properties=["core_cases_computed", "forward_matches_oracle"])
    text = result.format_matrix()
    assert result.matrix["forward_matches_oracle"]["answers_numpy"] == verdict.FAIL, text
    assert any("forward returned <not an array: NotATensor(numpy.ndarray)>" in o.detail for o in result.outcomes)
    assert result.exit_code == 1, text


def test_project_backend_in_a_worker_and_report(tmp_path):
    result = run_suite(backends=["reference"], max_examples=3, isolate=True)
    assert result.implementations["reference"]["isolated"] is True
    assert result.verdicts["reference"].verdict == verdict.CONFORMANT, result.format_matrix()
    assert result.matrix["forward_errors_name_the_argument"]["reference"] == verdict.PASS
    write_report(result, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["matrix"] == result.matrix and report["exit_code"] == 0
    assert report["tiers"] == verdict.TIERS
    assert {r["property"] for r in report["results"]} == set(verdict.PROPERTIES)


def test_torch_backends_through_the_adapter():
    """The project's torch backends ("fast": numba kernels as a torch op, "taps": plain PyTorch) are judged with
    tensors in and out; the conformance CI run covers the NumPy ones."""
    properties = ["core_cases_computed", "forward_matches_oracle", "backward_matches_autograd",
                  "forward_errors_name_the_argument", "backward_errors_name_the_argument"]
    result = run_suite(backends=["fast", "taps"], framework="torch", max_examples=3, properties=properties)
    for name in ("fast", "taps"):
        assert result.verdicts[name].verdict == verdict.CONFORMANT, result.format_matrix()


def test_matrix_fits_100_columns_with_many_implementations():
    specs = [f"involution.conformance.broken:{name}" for name in ("padding_off_by_one", "dilation_ignored")]
    result = run_suite(backends=["reference", "oracle"],
                       impls=specs + ["involution.conformance.adapters.official_naive"],
                       properties=["core_cases_computed"])
    text = result.format_matrix()
    assert max(len(line) for line in text.splitlines()) <= WIDTH, text
    assert "official_naive" in text and "padding_off_by_one" not in text.split("\n\n")[1], text


@pytest.mark.parametrize("argv, message", [
    (["--property", "forward_matches_oracel"], "(did you mean forward_matches_oracle?)"),
    (["--impl", "./my_involution.py"], "not a file path"),
    (["--backend", "no-such-backend"], "--backend must be a numpy backend"),
    (["--backend", "taps"], "--backend must be a numpy backend"),
    (["--impl", "no_such_module_for_conformance"], "no_such_module_for_conformance unavailable"),
    (["--report", "/no/such/folder/report.json"], "--report folder '/no/such/folder' of"),
    (["--framework", "numpy", "--device", "cuda"], "--device cuda needs --framework torch"),
])
def test_usage_errors_exit_2_before_running(argv, message, capsys):
    assert main(["conformance", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert "conformance matrix" not in captured.out


@pytest.mark.parametrize("argv", [["--max-examples", "0"], ["--max-examples", "-1"], ["--timeout", "0"],
                                  ["--timeout", "nan"]])
def test_invalid_numbers_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["conformance", *argv])
    assert exit_info.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_cli_exit_codes_for_failure_and_too_little_evidence(tmp_path, capsys):
    report = tmp_path / "report.json"
    code = main(["conformance", "--impl", "involution.conformance.broken:padding_off_by_one",
                 "--property", "forward_matches_oracle", "--max-examples", "10", "--no-shrink",
                 "--report", str(report)])
    assert code == 1
    assert "forward_matches_oracle" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["exit_code"] == 1 and data["options"]["shrink"] is False, data["options"]
    code = main(["conformance", "--backend", "reference", "--property", "linear_in_x", "--max-examples", "2"])
    assert code == 3  # the core cases were not run: too little evidence for "conformant"
    assert "too little evidence" in capsys.readouterr().out
