"""Golden cases (``involution conformance --export-cases DIR``) and their NumPy-only checker: the reference and
the fast CPU backend pass them, a broken implementation fails them, and a folder holding files is not written
into without ``--force``."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from involution import backends
from involution.cli import main
from involution.conformance import broken, golden_check
from involution.conformance.core import CORE

DOCS = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
SAMPLE = 4


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden")
    assert main(["conformance", "--export-cases", str(directory), "--max-examples", str(SAMPLE), "--force"]) == 0
    return directory


def test_export_writes_the_core_and_a_seeded_sample_in_the_documented_format(cases_dir, tmp_path):
    index = json.loads((cases_dir / "cases.json").read_text())
    assert index["format"] == "involution-golden-cases/1"
    names = [case["name"] for case in index["cases"]]
    assert names == [f"core_{i}" for i in range(len(CORE))] + [f"random_{i}" for i in range(SAMPLE)]
    for case in index["cases"]:
        assert set(case) == {"name", "file", "description", "dtype", "x_shape", "kernel_shape", "stride", "padding",
                             "dilation", "tolerance"}, case
        assert (cases_dir / case["file"]).is_file()
    # seeded: a second export writes the very same cases
    assert main(["conformance", "--export-cases", str(tmp_path), "--max-examples", str(SAMPLE)]) == 0
    assert (tmp_path / "cases.json").read_text() == (cases_dir / "cases.json").read_text()


@pytest.mark.parametrize("name", ["reference", "fast-cpu"])
def test_project_backends_pass_the_golden_cases(cases_dir, name):
    module = backends.load(name)
    assert golden_check.check(cases_dir, module.involution2d, module.involution2d_backward) == []


def test_a_broken_implementation_fails_them_through_the_command_line(cases_dir):
    run = subprocess.run([sys.executable, "-m", "involution.conformance.golden_check", str(cases_dir),
                          "involution.conformance.broken:flipped_taps"], capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert re.search(r"^core_0 out: \d+ of 504 elements off, largest error .*; core case B=2 C=4 G=1 7x9 K=3 "
                     r"stride=1 padding=1 float64$", run.stdout, re.MULTILINE), run.stdout
    failures = golden_check.check(cases_dir, broken.grad_kernel_from_first_channel.involution2d,
                                  broken.grad_kernel_from_first_channel.involution2d_backward)
    assert failures and all(" grad_kernel: " in failure for failure in failures), failures


def test_a_folder_holding_files_is_not_written_without_force(tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert main(["conformance", "--export-cases", str(tmp_path)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"] and mine.read_text() == "mine"
    assert main(["conformance", "--export-cases", str(tmp_path), "--max-examples", "1", "--force"]) == 0
    assert mine.read_text() == "mine" and (tmp_path / "cases.json").is_file()
    assert main(["conformance", "--export-cases", str(tmp_path / "new"), "--impl", "my_kernel"]) == 2
    assert "--export-cases writes files and runs nothing: --impl does not apply" in capsys.readouterr().err
    # the output-file rule of every command (involution.arguments.prepare_output): the parent folder must exist
    assert main(["conformance", "--export-cases", str(tmp_path / "missing" / "golden")]) == 2
    assert "--export-cases folder" in (err := capsys.readouterr().err) and "does not exist" in err, err
    assert not (tmp_path / "missing").exists()


def test_the_checker_in_the_docs_is_the_shipped_one():
    """docs/conformance.md shows golden_check.py whole (its code block); they must not drift apart."""
    shipped = Path(golden_check.__file__).read_text()
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert shipped in blocks, "docs/conformance.md must show conformance/golden_check.py verbatim"
