"""The command line: subcommands are registered, and the demo's gradient check really checks; the demo is
deterministic, leaves the CUDA simulator out and keeps the suite's floating-point warnings out of its output."""
import os
import re
import subprocess
import sys
import warnings

import pytest

from involution.cli import COMMANDS, main


@pytest.fixture
def demo_process_state(monkeypatch):
    """Restore what the demo sets for its own process: the hypothesis profile, PYTHONWARNINGS, warning filters."""
    from hypothesis import settings

    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    monkeypatch.delenv("INVOLUTION_REAL_GPU", raising=False)
    with warnings.catch_warnings():
        yield
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "involution", *args], capture_output=True, text=True, timeout=300)


def test_every_registered_command_is_listed_in_help():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout, f"{name} missing from --help:\n{result.stdout}"


def test_demo_gradient_check_reports_small_errors():
    result = run_cli("demo", "--skip", "complexity", "--skip", "conformance", "--skip", "bench")
    assert result.returncode == 0, result.stderr
    errors = [float(e) for e in re.findall(r"max relative error ([0-9.e+-]+)", result.stdout)]
    assert len(errors) == 2, result.stdout
    # float64 central differences on a bilinear op: round-off only (docs/backward.md).
    assert max(errors) < 1e-7, result.stdout


def test_unknown_command_fails():
    result = run_cli("no-such-command")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_help_shows_plain_text_not_rest_markup(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "``" not in capsys.readouterr().out, f"{name} --help shows reST double backticks"


def test_demo_bench_runs_in_a_fresh_clone_without_an_out_folder(tmp_path, monkeypatch, demo_process_state):
    """``out/`` is ignored by git, so a fresh clone has none; the demo makes it before its benchmark, whose
    ``--json`` argument must name an existing folder (checked by the real parser here, the benchmark not run)."""
    from involution import cli
    from involution.commands import demo

    parsed = []

    def parse_only(argv):
        parsed.append(cli.build_parser().parse_args(argv))  # SystemExit (status 2) if --json's folder is missing
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "main", parse_only)
    monkeypatch.setattr(demo, "op_tour", lambda seed: None)
    args = cli.build_parser().parse_args(["demo", "--skip", "complexity", "--skip", "conformance"])
    assert demo.run(args) == 0
    assert [args.json for args in parsed if args.command == "bench"] == ["out/bench_cpu_quick.json"] \
        and (tmp_path / "out").is_dir(), parsed


def demo_commands(monkeypatch, argv, capsys):
    """The command lines the demo runs for ``argv`` (parsed, not run) and what it printed."""
    from involution import cli
    from involution.commands import demo

    parsed = []

    def parse_only(argv):
        parsed.append(argv)
        cli.build_parser().parse_args(argv)
        return 0

    monkeypatch.setattr(cli, "main", parse_only)
    monkeypatch.setattr(demo, "op_tour", lambda seed: None)
    assert demo.run(cli.build_parser().parse_args(["demo", *argv])) == 0
    return parsed, capsys.readouterr().out


def test_demo_leaves_the_cuda_simulator_out_and_says_so(monkeypatch, capsys, demo_process_state):
    parsed, out = demo_commands(monkeypatch, ["--skip", "bench"], capsys)
    suites = [argv for argv in parsed if argv[0] == "conformance"]
    assert len(suites) == 2 and all("fast-cuda" not in argv for argv in suites), suites
    judged = [suite[suite.index("--backend") + 1::2] for suite in suites]
    assert judged == [["reference", "fast-cpu"], ["fast", "taps"]], suites
    assert "fast-cuda left out" in out, out
    monkeypatch.setenv("INVOLUTION_REAL_GPU", "1")
    parsed, out = demo_commands(monkeypatch, ["--skip", "bench"], capsys)
    assert "fast-cuda" in parsed[2] and "left out" not in out, parsed  # complexity, warmup, then the NumPy suite


def test_demo_compiles_before_the_suite_times_any_call(monkeypatch, capsys, demo_process_state):
    parsed, _ = demo_commands(monkeypatch, [], capsys)
    names = [argv[0] for argv in parsed]
    assert names.index("warmup") < names.index("conformance") and "float64" in parsed[names.index("warmup")], parsed


def test_demo_draws_the_same_examples_every_run_and_keeps_no_database(monkeypatch, capsys, demo_process_state):
    from hypothesis import settings

    demo_commands(monkeypatch, ["--skip", "bench", "--skip", "conformance"], capsys)
    assert settings().derandomize and settings().database is None, settings()


def test_demo_quiets_floating_point_warnings_here_and_in_its_workers(monkeypatch, capsys, demo_process_state):
    import numpy as np

    demo_commands(monkeypatch, ["--skip", "bench", "--skip", "conformance"], capsys)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what an unconfigured process does, before the demo's filters
        from involution.commands.demo import quiet_floating_point_warnings

        quiet_floating_point_warnings()
        np.array([np.inf]) * 0
    assert not caught, [str(warning.message) for warning in caught]
    worker = subprocess.run([sys.executable, "-c", "import numpy as np; np.array([np.inf]) * 0; "
                             "np.array([1e308]) * 10; np.array([1.0]) / 0"], capture_output=True, text=True,
                            env={**os.environ}, timeout=120)
    assert worker.returncode == 0 and worker.stderr == "", worker.stderr


def test_conformance_default_timeout_is_the_runners():
    pytest.importorskip("pytest")
    from involution.commands import conformance as command
    from involution.conformance import runner

    assert command.DEFAULT_TIMEOUT == runner.DEFAULT_TIMEOUT


def test_version_is_the_packages():
    import involution

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"involution {involution.__version__}", result
