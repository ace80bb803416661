"""The command line: subcommands are registered, and the demo's gradient check really checks."""
import re
import subprocess
import sys

import pytest

from involution.cli import COMMANDS, main


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


def test_demo_bench_runs_in_a_fresh_clone_without_an_out_folder(tmp_path, monkeypatch):
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
    assert [args.json for args in parsed] == ["out/bench_cpu_quick.json"] and (tmp_path / "out").is_dir(), parsed
