"""Installs per use: the base install (NumPy only) runs every NumPy-only command and names the extra for the others;
a wheel built from the tracked files installs and runs in a fresh virtual environment, with and without the
``conformance`` extra.

The base install is simulated by running the CLI in a subprocess whose optional imports are blocked (each blocked
module is ``None`` in ``sys.modules``, so ``import numba`` raises ModuleNotFoundError and
``importlib.util.find_spec("numba")`` is None, as where it is not installed). The wheel test builds a real wheel and
installs it offline into fresh virtual environments that see only NumPy, or NumPy and what ``[conformance]`` needs,
from this environment's packages (symbolic links: nothing is downloaded, torch stays the tested version).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from involution.cli import COMMANDS, EXTRAS, install_hint

ROOT = Path(__file__).resolve().parents[1]
# Every optional top-level module the project's extras bring (EXTRAS) and what they pull in.
BLOCKED = sorted({module for modules in EXTRAS.values() for module in modules}
                 | {"llvmlite", "numba_cuda", "tbb", "_pytest", "matplotlib", "scipy", "fvcore"})
NUMPY_ONLY = [
    ["--help"], ["--version"],
    ["complexity"], ["complexity", "rednet50", "--format", "json"], ["complexity", "all", "--format", "csv"],
    ["complexity", "--format", "markdown", "--compare", "resnet"], ["complexity", "rednet26", "--per-layer"],
    ["complexity", "--table", "detection"], ["complexity", "--table", "ablation"],
    ["complexity", "--convention", "published"], ["complexity", "--convention", "fvcore"],
    ["complexity", "mask_rcnn", "--backbone", "rednet50", "--neck", "involution"],
    *[[name, "--help"] for name in COMMANDS],
]


def clean_env(**extra) -> dict:
    """This environment without PYTHONPATH (the subprocesses import only what is installed), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, **extra}


def run_python(code: str, *args, python=sys.executable, blocked=(), cwd, timeout=300):
    """Run ``code`` with ``args`` in a fresh interpreter with ``blocked`` modules made unimportable."""
    prelude = f"import sys\nfor name in {list(blocked)!r}:\n    sys.modules[name] = None\n"
    return subprocess.run([str(python), "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=clean_env())


CLI = "import runpy, sys\nsys.argv[0] = 'involution'\nrunpy.run_module('involution', run_name='__main__')"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder outside the checkout (``python -c`` puts the current folder first on ``sys.path``)."""
    return tmp_path_factory.mktemp("install")


@pytest.mark.parametrize("argv", NUMPY_ONLY, ids=" ".join)
def test_numpy_only_commands_print_what_the_full_install_prints(argv, folder):
    base = run_python(CLI, *argv, blocked=BLOCKED, cwd=folder)
    full = run_python(CLI, *argv, cwd=folder)
    assert base.returncode == 0, f"{argv} failed without the extras:\n{base.stderr}"
    assert base.stdout == full.stdout and base.stdout.strip(), (argv, base.stdout, full.stdout)
    assert "Traceback" not in base.stderr, base.stderr


def test_the_json_table_parses_and_counts_rednet50(folder):
    result = run_python(CLI, "complexity", "rednet50", "--format", "json", blocked=BLOCKED, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "rednet50" in json.dumps(json.loads(result.stdout)), result.stdout


@pytest.mark.parametrize("name", [name for name, command in COMMANDS.items() if command.extras])
def test_a_command_without_its_extra_exits_2_naming_it(name, folder):
    extra_args = {"conformance": ["--backend", "reference"], "bench": ["--quick"]}.get(name, [])
    result = run_python(CLI, name, *extra_args, blocked=BLOCKED, cwd=folder)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert install_hint(COMMANDS[name].extras) in lines[0] and "Traceback" not in result.stderr, lines


REFERENCE_OP = """
import numpy as np, sys
from involution import involution2d, involution2d_backward
from involution.reference import RedNet
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8, 9, 7))
kernel = rng.standard_normal((2, 2, 3, 3, 5, 7))
out = involution2d(x, kernel, stride=(2, 1), padding=1)  # the default backend: the reference where numba is missing
grad_x, grad_kernel = involution2d_backward(np.ones_like(out), x, kernel, stride=(2, 1), padding=1)
logits = RedNet(26, num_classes=10).eval()(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
np.savez(sys.argv[1], out=out, grad_x=grad_x, grad_kernel=grad_kernel, logits=logits)
"""


def expected_reference_results() -> dict:
    """What :data:`REFERENCE_OP` computes, here, with the reference backend named."""
    from involution.reference import RedNet, op

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 7))
    kernel = rng.standard_normal((2, 2, 3, 3, 5, 7))
    out = op.involution2d(x, kernel, stride=(2, 1), padding=1)
    grad_x, grad_kernel = op.involution2d_backward(np.ones_like(out), x, kernel, stride=(2, 1), padding=1)
    logits = RedNet(26, num_classes=10).eval()(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    return dict(out=out, grad_x=grad_x, grad_kernel=grad_kernel, logits=logits)


def check_reference_results(path) -> None:
    results = np.load(path)
    for name, expected in expected_reference_results().items():  # the same code on the same input: exact
        np.testing.assert_array_equal(results[name], expected, err_msg=name)


def test_reference_op_and_numpy_rednet_run_without_the_extras(folder):
    result = run_python(REFERENCE_OP, str(folder / "base.npz"), blocked=BLOCKED, cwd=folder)
    assert result.returncode == 0, result.stderr
    check_reference_results(folder / "base.npz")


# ------------------------------------------------------------------------------------------------ the wheel
def link_packages(target: Path, keep) -> None:
    """Symbolic links in ``target`` to the entries of this environment's site-packages that ``keep(name)`` accepts
    (never the editable install of this checkout)."""
    site = Path(np.__file__).resolve().parents[1]
    target.mkdir()
    for entry in site.iterdir():
        lowered = entry.name.lower()
        if "involution" in lowered or lowered.startswith("__editable__") or not keep(lowered):
            continue
        (target / entry.name).symlink_to(entry)


def fresh_venv(path: Path, packages: Path) -> Path:
    """A virtual environment at ``path`` (no system site-packages, no pip: this environment's pip installs into it)
    that also sees ``packages``; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "local_packages.pth").write_text(f"{packages}\n")
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built with ``pip wheel --no-deps`` from a copy of the checkout's tracked and unignored files."""
    root = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    source = root / "checkout"
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(root / "dist"), str(source)], check=True, timeout=600, env=clean_env())
    (built,) = (root / "dist").glob("involution-*.whl")
    return built


def install(python: Path, requirement: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--quiet",
                    requirement], check=True, timeout=600, env=clean_env(PIP_FIND_LINKS=""))


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")  # one worker builds the module's wheel once (make test runs --dist loadgroup)
def test_wheel_without_extras_runs_numpy_commands_and_names_the_extra(wheel, tmp_path):
    link_packages(tmp_path / "numpy_only", lambda name: name == "numpy" or name.startswith(("numpy-", "numpy.")))
    python = fresh_venv(tmp_path / "venv", tmp_path / "numpy_only")
    install(python, str(wheel))
    involution = python.parent / "involution"
    where = run_python("import involution; print(involution.__file__)", python=python, cwd=tmp_path)
    assert where.stdout.startswith(str(tmp_path / "venv")), where  # the wheel's copy, not this checkout

    help_ = subprocess.run([str(involution), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert help_.returncode == 0 and all(name in help_.stdout for name in COMMANDS), help_.stderr
    table = subprocess.run([str(involution), "complexity", "rednet50", "--format", "json"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
    here = run_python(CLI, "complexity", "rednet50", "--format", "json", cwd=tmp_path)
    assert table.returncode == 0 and json.loads(table.stdout) == json.loads(here.stdout), table.stderr
    op = run_python(REFERENCE_OP, str(tmp_path / "wheel.npz"), python=python, cwd=tmp_path)
    assert op.returncode == 0, op.stderr
    check_reference_results(tmp_path / "wheel.npz")
    suite = subprocess.run([str(involution), "conformance", "--backend", "reference"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
    lines = suite.stderr.strip().splitlines()
    assert suite.returncode == 2 and len(lines) == 1 and install_hint(["conformance"]) in lines[0], suite.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")
def test_wheel_with_the_conformance_extra_judges_the_reference(wheel, tmp_path):
    link_packages(tmp_path / "packages", lambda name: True)
    python = fresh_venv(tmp_path / "venv", tmp_path / "packages")
    install(python, f"{wheel}[conformance]")
    torch_version = run_python("import torch; print(torch.__version__)", python=python, cwd=tmp_path)
    assert torch_version.stdout.startswith("2.13.0"), torch_version
    suite = subprocess.run([str(python.parent / "involution"), "conformance", "--backend", "reference",
                            "--max-examples", "2", "--no-shrink"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=600, env=clean_env())
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-3000:]
    assert "exit code 0: conformant" in suite.stdout and "reference: conformant" in suite.stdout, suite.stdout
