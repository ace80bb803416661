"""Hostile implementations (tests/hostile_implementations/) through the conformance CLI: each gets the verdict it
earned (exit 1 or 3; 2 for limits that are not plain data), none of its code runs in the CLI's process, and no
process of its outlives the CLI.

Each module appends ``"<event> <pid>"`` to ``$HOSTILE_LOG`` when it is imported and when a payload of its runs;
the CLI runs in this test's process, so a line with this process's id is code of theirs run in the parent.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from involution.cli import main

ANSI = re.compile(r"\x1b")
BASE = ["--max-examples", "6", "--no-shrink", "--timeout", "20"]


@pytest.fixture
def hostile_log(tmp_path, monkeypatch):
    log = tmp_path / "hostile.log"
    monkeypatch.setenv("HOSTILE_LOG", str(log))
    return log


def events(log: Path) -> list[tuple[str, int]]:
    lines = log.read_text().split() if log.exists() else []
    return [(event, int(pid)) for event, pid in zip(lines[::2], lines[1::2])]


def run_cli(name, properties, capsys, tmp_path, *extra):
    report = tmp_path / "report.json"
    argv = ["conformance", "--impl", f"hostile_implementations.{name}", *BASE, "--report", str(report), *extra]
    argv += [arg for prop in properties for arg in ("--property", prop)]
    code = main(argv)
    captured = capsys.readouterr()
    data = json.loads(report.read_text()) if report.exists() else None
    return code, captured.out, captured.err, data


def assert_nothing_ran_here(log: Path):
    found = events(log)
    assert found, "the hostile module was never imported: the test proves nothing"
    assert all(pid != os.getpid() for _, pid in found), f"code of the implementation ran in the CLI's process: {found}"
    assert not [event for event, _ in found if event.startswith("payload")], f"a pickle payload ran: {found}"


def test_pickle_payload_in_limits_is_a_usage_error_and_never_runs(hostile_log, capsys, tmp_path):
    code, out, err, _ = run_cli("limits_payload", ["core_cases_computed"], capsys, tmp_path)
    assert code == 2, out + err
    assert "CONFORMANCE_LIMITS['max_work'] must be plain JSON data" in err, err
    assert "hostile_implementations.Payload" in err, err
    assert_nothing_ran_here(hostile_log)


def test_pickle_payload_in_results_fails_and_never_runs(hostile_log, capsys, tmp_path):
    code, out, err, data = run_cli("results_payload", ["core_cases_computed", "forward_matches_oracle"], capsys,
                                   tmp_path)
    assert code == 1 and data["exit_code"] == 1, out
    assert "results_payload.OracleAnswer" in out, out
    assert_nothing_ran_here(hostile_log)


def test_input_writer_fails_on_modified_inputs(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("input_writer", ["forward_matches_oracle"], capsys, tmp_path)
    assert code == 1, out
    assert data["matrix"]["forward_matches_oracle"]["hostile_implementations.input_writer"] == "FAIL"
    assert "forward modified its inputs" in out, out
    assert_nothing_ran_here(hostile_log)


def test_write_back_that_hides_a_wrong_answer_fails_naming_the_input(hostile_log, capsys, tmp_path):
    # Audit B1: zeros for non-contiguous inputs, after zeroing them in place; once the worker wrote the change
    # back, a property whose expected values came from the inputs after the call compared zeros with zeros.
    code, out, _, data = run_cli("write_back_mask", ["noncontiguous_matches_contiguous", "batched_equals_per_sample"],
                                 capsys, tmp_path)
    assert code == 1, out
    cells = {prop: data["matrix"][prop]["hostile_implementations.write_back_mask"]
             for prop in ("noncontiguous_matches_contiguous", "batched_equals_per_sample")}
    assert cells["noncontiguous_matches_contiguous"] == "FAIL", cells
    detail = " ".join(result["detail"] for result in data["results"] if result["outcome"] == "failed")
    assert re.search(r"forward modified its inputs: x \(\d+ of \d+ elements changed\), kernel", detail), detail
    assert_nothing_ran_here(hostile_log)


@pytest.mark.parametrize("dtype, message", [("complex128", r"got a complex result \(complex128\)"),
                                            ("float64", r"got a float64 array, expected a float32 array")])
def test_wrong_result_dtype_on_noncontiguous_input_fails(hostile_log, capsys, tmp_path, monkeypatch, dtype, message):
    # Audit B2: the comparison helper cast every answer to float64 (dropping an imaginary part), and only
    # forward_matches_oracle checked the dtype; the helper now applies the suite's result-type rule everywhere.
    monkeypatch.setenv("HOSTILE_DTYPE", dtype)
    code, out, _, data = run_cli("noncontiguous_dtype", ["noncontiguous_matches_contiguous"], capsys, tmp_path,
                                 "--max-examples", "20")
    assert code == 1, out
    assert data["matrix"]["noncontiguous_matches_contiguous"]["hostile_implementations.noncontiguous_dtype"] == "FAIL"
    detail = " ".join(result["detail"] for result in data["results"] if result["outcome"] == "failed")
    assert re.search(message, detail), detail
    assert_nothing_ran_here(hostile_log)


def test_declared_limits_that_narrow_the_draws_are_never_conformant(hostile_log, capsys, tmp_path):
    # Audit B3: limits that exclude no core case narrowed the draws to where the answers are right: exit 0.
    code, out, _, data = run_cli("limits_hide", ["core_cases_computed", "forward_matches_oracle"], capsys, tmp_path)
    verdict = data["verdicts"]["hostile_implementations.limits_hide"]
    assert code == 3 and verdict["verdict"] == "conformant only within declared limits", out
    assert "conformant only within its declared limits: max_dilation=1 (the suite draws up to 3), square_only=True" \
        in " ".join(verdict["reasons"]), verdict
    assert_nothing_ran_here(hostile_log)


def test_wrong_answers_outside_the_declared_limits_fail(hostile_log, capsys, tmp_path):
    # Audit B3: outside its declared limits an implementation must decline; the zeros it returns there fail.
    code, out, _, data = run_cli("limits_hide", ["outside_declared_limits_declined_or_right"], capsys, tmp_path)
    assert code == 1, out
    assert data["matrix"]["outside_declared_limits_declined_or_right"]["hostile_implementations.limits_hide"] \
        == "FAIL", out
    detail = " ".join(result["detail"] for result in data["results"] if result["outcome"] == "failed")
    assert "outside the declared limits" in detail, detail
    assert_nothing_ran_here(hostile_log)


def test_declared_max_examples_below_the_suites_is_never_conformant(capsys, tmp_path):
    code, out, _, data = run_cli("few_examples", ["core_cases_computed", "forward_matches_oracle"], capsys, tmp_path)
    verdict = data["verdicts"]["hostile_implementations.few_examples"]
    assert code == 3 and "declared limits: max_examples=1 (the suite runs 6 per property)" in \
        " ".join(verdict["reasons"]), out


def test_undeclared_port_that_declines_is_conformant_only_within_what_it_answered(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("dilation_port", ["core_cases_computed", "forward_matches_oracle", "linear_in_x"],
                                 capsys, tmp_path, "--max-examples", "20")
    verdict = data["verdicts"]["hostile_implementations.dilation_port"]
    assert code == 3 and verdict["verdict"] == "conformant only within what it answered", out
    reason = " ".join(verdict["reasons"])
    assert re.search(r"declined \d+ of \d+ drawn cases: NotImplementedError: (dilation > 1|rectangular kernels)",
                     reason), reason
    assert_nothing_ran_here(hostile_log)


def test_declined_core_case_is_named(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("narrow_groups_port", ["core_cases_computed", "forward_matches_oracle"], capsys,
                                 tmp_path)
    verdict = data["verdicts"]["hostile_implementations.narrow_groups_port"]
    assert code == 3 and verdict["verdict"] != "conformant", out
    reasons = " ".join(verdict["reasons"])
    assert "core case B=1 C=16 G=1 9x8 K=7" in reasons and "more than 4 channels per group" in reasons, reasons


def test_core_only_implementation_is_not_conformant(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("core_only", ["core_cases_computed", "forward_matches_oracle", "linear_in_kernel"],
                                 capsys, tmp_path)
    verdict = data["verdicts"]["hostile_implementations.core_only"]
    assert code == 3 and verdict["verdict"] == "conformant only within what it answered", out
    assert "no computed example of forward_matches_oracle, linear_in_kernel" in " ".join(verdict["reasons"]), verdict


def test_core_case_at_wide_groups_catches_a_wide_group_slip(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("wide_groups_wrong", ["core_cases_computed"], capsys, tmp_path)
    assert code == 1, out  # a core case with 5 or 16 channels per group catches it
    assert re.search(r"core case B=\d+ C=(10|16) ", data["results"][0]["detail"]), data["results"]


def test_wrong_only_at_wide_groups_fails(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("wide_groups_wrong", ["forward_matches_oracle"], capsys, tmp_path,
                                 "--max-examples", "30")
    assert code == 1, out
    assert data["matrix"]["forward_matches_oracle"]["hostile_implementations.wide_groups_wrong"] == "FAIL", out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the guard finds escaped processes through /proc (Linux)")
def test_forking_hanger_times_out_and_leaves_no_process(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("forking_hanger", ["core_cases_computed"], capsys, tmp_path, "--timeout", "3")
    assert code == 1 and any("timed out after 3 s" in r["detail"] for r in data["results"]), out
    grandchildren = [pid for event, pid in events(hostile_log) if event == "grandchild"]
    assert grandchildren, "the grandchild never started: the test proves nothing"
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in grandchildren) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in grandchildren), f"processes outlived the CLI: {grandchildren}"
    assert_nothing_ran_here(hostile_log)


def test_memory_hog_hits_the_memory_limit(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("memory_hog", ["core_cases_computed"], capsys, tmp_path, "--memory-limit", "1.5")
    assert code == 1, out
    detail = data["results"][0]["detail"]
    assert "MemoryError" in detail and "limited to 1.5 GiB: --memory-limit" in detail, detail


def test_chatty_printer_output_is_captured_and_escape_codes_stripped(hostile_log, capsys, tmp_path):
    code, out, err, data = run_cli("chatty_printer", ["core_cases_computed"], capsys, tmp_path)
    assert code == 1, out
    assert len(out) + len(err) < 20_000, f"the worker's output reached the terminal: {len(out) + len(err)} characters"
    assert "red alert: nothing computed" in data["results"][0]["detail"], data["results"]
    assert not ANSI.search(out) and not ANSI.search(json.dumps(data, ensure_ascii=False)), out


def test_forged_pickle_frame_on_the_pipe_is_refused_and_never_runs(hostile_log, capsys, tmp_path):
    code, out, _, data = run_cli("forged_frame", ["core_cases_computed"], capsys, tmp_path)
    assert code == 1, out
    assert "outside the channel's format" in data["results"][0]["detail"], data["results"]
    assert_nothing_ran_here(hostile_log)


def run_cli_process(name, properties, tmp_path, *extra, cwd=None, env=None):
    """The CLI as its own process (``python -m involution``): ``(exit code, stdout + stderr, peak resident KiB of
    the CLI's own process, its pid)``, the peak read from ``/proc/<pid>/status`` (VmHWM) while it runs."""
    argv = [sys.executable, "-m", "involution", "conformance", "--impl", f"hostile_implementations.{name}", *BASE,
            "--report", str(tmp_path / "report.json"), "--force", *extra]
    argv += [arg for prop in properties for arg in ("--property", prop)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), **(env or {})}
    with tempfile.TemporaryFile() as log:
        # SIGINT as a shell starts a command: a test runner's process may ignore it, and an ignored SIGINT is
        # inherited (Python then installs no KeyboardInterrupt handler), which would hide the interrupt under test
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or tmp_path, env=env,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        peak = 0
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))
            except (OSError, AttributeError):
                pass
            time.sleep(0.02)
        log.seek(0)
        return process.returncode, log.read().decode(errors="replace"), peak, process.pid


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the CLI's peak memory is read from /proc")
def test_oversized_frames_are_refused_before_they_are_read(hostile_log, tmp_path):
    code, output, peak, _ = run_cli_process("bigframes", ["core_cases_computed"], tmp_path)
    assert code == 1, output
    assert "outside the channel's format" in output, output
    # the worker wrote 2 frames of 255 MiB; reading even one would lift the CLI's peak by 255 MiB over its own
    _, baseline_output, baseline, _ = run_cli_process("core_only", ["core_cases_computed"], tmp_path)
    assert baseline > 0, baseline_output
    assert peak < baseline + (128 << 10), (peak, baseline, output)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="escaped processes are found through /proc (Linux)")
def test_a_daemon_that_killed_its_guard_does_not_outlive_the_cli(hostile_log, capsys, tmp_path):
    try:
        code, out, _, _ = run_cli("escape", ["forward_matches_oracle"], capsys, tmp_path)
        daemons = [pid for event, pid in events(hostile_log) if event == "daemon"]
        assert daemons, "the daemon never started: the test proves nothing"
        assert code == 1, out  # the call whose guard it killed ended the worker
        deadline = time.monotonic() + 2
        while any(alive(pid) for pid in daemons) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in daemons), f"processes outlived the CLI: {daemons}"
        assert_nothing_ran_here(hostile_log)
    finally:  # leave nothing running when the test fails
        for pid in [pid for event, pid in events(hostile_log) if event == "daemon"]:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the CLI's memory is reached through /proc (Linux)")
def test_a_worker_cannot_plant_modules_for_the_cli_or_open_its_memory(hostile_log, tmp_path):
    code, output, _, cli = run_cli_process("reach_parent", ["forward_matches_oracle"], tmp_path, cwd=tmp_path)
    found = events(hostile_log)
    assert ("imported", cli) not in found and found, found
    assert ("shadow", cli) not in found, f"a module the worker wrote ran in the CLI's process: {found}\n{output}"
    assert "mem-opened" not in [event for event, _ in found], f"the worker opened the CLI's memory: {found}"
    assert "mem-refused" in [event for event, _ in found], found  # it did try
    assert code == 3, output  # right answers, one property: too little evidence


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="escaped processes are found through /proc (Linux)")
def test_opcheck_runs_under_the_guard_and_its_result_comes_through_the_channel(hostile_log, capsys, tmp_path):
    pytest.importorskip("torch")
    try:
        code, out, _, data = run_cli("opcheck_escape", ["torch_library_opcheck"], capsys, tmp_path,
                                     "--framework", "torch", "--memory-limit", "2")
        found = [event for event, _ in events(hostile_log)]
        assert "alloc-refused" in found or "alloc-ok" in found, f"opcheck never imported it: {found}\n{out}"
        assert "alloc-ok" not in found, f"opcheck ran without the memory limit: {found}"
        cell = data["matrix"]["torch_library_opcheck"]["hostile_implementations.opcheck_escape"]
        assert cell != "pass", f"a forged stdout line decided opcheck: {out}"
        assert "forking" in found, found  # its daemon may be killed before it records itself
        daemons = [pid for event, pid in events(hostile_log) if event == "daemon"]
        assert not any(alive(pid) for pid in daemons), f"processes outlived the CLI: {daemons}"
        assert_nothing_ran_here(hostile_log)
    finally:
        for pid in [pid for event, pid in events(hostile_log) if event == "daemon"]:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the CLI's pid is found through /proc (Linux)")
def test_an_interrupted_run_gives_no_verdict(hostile_log, tmp_path):
    code, output, _, _ = run_cli_process("sigint", ["forward_matches_oracle", "core_cases_computed"], tmp_path)
    # no verdict at all from a partial run (it said "conformant" when the interrupt came late enough)
    assert code == 2 and re.search(r"^\s*sigint: not judged: the run was interrupted", output, re.M), output
    verdicts = json.loads((tmp_path / "report.json").read_text())["verdicts"]
    assert all(v["verdict"].startswith("not judged") for v in verdicts.values()), verdicts
