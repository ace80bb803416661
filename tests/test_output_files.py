"""The one output-file rule (involution.arguments.prepare_output / write_atomically) and every command that
writes a file: checked before any work (exit 2), an existing file replaced only with --force, written atomically."""
import json
import os

import pytest

from involution.arguments import prepare_output, write_atomically
from involution.cli import main


def test_prepare_output_names_each_problem(tmp_path):
    existing = tmp_path / "report.json"
    existing.write_text("mine")
    assert prepare_output(tmp_path / "new.json", False, "--report") is None
    assert "does not exist" in prepare_output(tmp_path / "missing" / "r.json", False, "--report")
    assert "is a folder" in prepare_output(tmp_path, True, "--report")
    assert prepare_output(existing, False, "--report") == f"--report {str(existing)!r} exists; pass --force to " \
                                                          "replace it"
    assert prepare_output(existing, True, "--report") is None
    assert existing.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["report.json"]  # nothing left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_prepare_output_tries_to_create_a_file(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert "cannot create a file in folder" in prepare_output(folder / "r.json", False, "--json")
    finally:
        folder.chmod(0o700)


def test_write_atomically_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    write_atomically(path, "new")
    assert path.read_text() == "new"

    def fails(temporary):
        with open(temporary, "w") as file:
            file.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(path, fails)
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.json"]  # no temporary file left


def test_conformance_report_is_checked_before_the_run_and_replaced_only_with_force(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text("the user's file")
    argv = ["conformance", "--backend", "reference", "--property", "core_cases_computed", "--max-examples", "1",
            "--report", str(report)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "exists; pass --force" in captured.err and "conformance matrix" not in captured.out, captured
    assert report.read_text() == "the user's file"
    assert main(["conformance", "--report", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert json.loads(report.read_text())["exit_code"] == 0


def test_bench_json_existing_file_needs_force(tmp_path, capsys):
    existing = tmp_path / "bench.json"
    existing.write_text("keep")
    assert main(["bench", "--quick", "--json", str(existing)]) == 2  # refused before any benchmark runs
    assert "exists; pass --force" in capsys.readouterr().err and existing.read_text() == "keep"


def test_train_digits_out_existing_file_needs_force(tmp_path, capsys):
    existing = tmp_path / "weights.npz"
    existing.write_text("keep")
    for name in ("weights.npz", "weights"):  # numpy.savez appends .npz: both name the same file
        assert main(["train-digits", "--epochs", "1", "--no-progress", "--out", str(tmp_path / name)]) == 2
        captured = capsys.readouterr()
        assert "exists; pass --force" in captured.err and "tiny RedNet" not in captured.out, captured
    assert existing.read_text() == "keep"


def test_train_digits_saves_atomically_over_an_existing_file_with_force(tmp_path, capsys):
    from involution.reference.checkpoint import read_npz

    existing = tmp_path / "weights.npz"
    existing.write_text("old")
    assert main(["train-digits", "--epochs", "1", "--no-progress", "--batch-size", "256", "--out",
                 str(tmp_path / "weights"), "--force"]) == 0
    assert f"saved weights to {existing}" in capsys.readouterr().out
    assert len(read_npz(existing)) > 10 and os.listdir(tmp_path) == ["weights.npz"]


def test_a_dangling_symlink_is_an_existing_file(tmp_path, capsys):
    """A dangling symbolic link (the path exists as a link, its target does not) is refused without --force, as
    any existing file: writing through it would create the file it names, wherever that is."""
    link = tmp_path / "report.json"
    link.symlink_to(tmp_path / "elsewhere" / "target.json")
    assert prepare_output(link, False, "--report") == f"--report {str(link)!r} exists; pass --force to replace it"
    code = main(["conformance", "--backend", "reference", "--property", "core_cases_computed", "--report", str(link)])
    assert code == 2 and "exists; pass --force" in capsys.readouterr().err
    folder = tmp_path / "cases"
    folder.symlink_to(tmp_path / "nowhere")
    assert main(["conformance", "--export-cases", str(folder)]) == 2
    assert "dangling symbolic link" in capsys.readouterr().err
    assert os.path.islink(link) and not os.path.exists(link)
