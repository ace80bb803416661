"""Every notebook runs top to bottom and still prints what its committed outputs say.

Each notebook is executed once (nbclient, a fresh kernel, working directory ``notebooks/``); an error in any cell
fails the test. Then each code cell's text outputs (stdout, and the ``text/plain`` of results and displays) are
compared with the committed ones after masking what legitimately varies between runs and machines:

* durations and rates (``5.2 s``, ``10.75step/s``), memory addresses (``0x7f...``);
* numbers in scientific notation (``2.9e-09``): measured round-off, which depends on the BLAS and the CPU;
* in a cell tagged ``numbers-vary`` (a benchmark, a training run on a shared machine) every number; its words are
  still compared, and the notebook asserts the claims its text makes about those numbers;
* runs of spaces (a table's column alignment follows the width of the numbers in it).

stderr (tqdm bars, warnings) is not compared. On a mismatch the fresh notebook is written to ``out/notebooks/`` and
the test fails with a unified diff per cell: re-execute the notebook
(``jupyter nbconvert --to notebook --execute --inplace notebooks/NAME.ipynb``) and read the diff before committing.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FRESH_DIR = ROOT / "out" / "notebooks"
VARY_TAG = "numbers-vary"
CELL_TIMEOUT_S = 600

NUMBER = r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
ALWAYS_MASKED = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x<address>"),
    (re.compile(r"[-+]?\d+(?:\.\d+)?[eE][-+]?\d+"), "<e-number>"),
    (re.compile(rf"{NUMBER}\s*(?:step|it|s)/s\b"), "<rate>"),
    (re.compile(rf"{NUMBER}\s*(?:ms|µs|us|ns|s|min)\b"), "<duration>"),
]
ANY_NUMBER = re.compile(NUMBER)
SPACES = re.compile(r"[ \t]+")


def masked(text: str, all_numbers: bool = False) -> str:
    """``text`` with what legitimately varies replaced by placeholders (see the module docstring)."""
    for pattern, placeholder in ALWAYS_MASKED:
        text = pattern.sub(placeholder, text)
    return SPACES.sub(" ", ANY_NUMBER.sub("<n>", text) if all_numbers else text)


def text_outputs(cell) -> str:
    """A code cell's stdout and ``text/plain`` outputs, in order, as one string; stderr is left out."""
    parts = []
    for output in cell.get("outputs", []):
        kind = output["output_type"]
        if kind == "stream" and output["name"] == "stdout":
            parts.append("".join(output["text"]))
        elif kind in ("execute_result", "display_data") and "text/plain" in output.get("data", {}):
            parts.append("".join(output["data"]["text/plain"]) + "\n")
        elif kind == "error":
            parts.append(f"{output['ename']}: {output['evalue']}\n")
    return "".join(parts)


def output_differences(committed, fresh) -> list[str]:
    """A unified diff per code cell whose masked text outputs differ between two versions of one notebook."""
    committed_cells = [cell for cell in committed["cells"] if cell["cell_type"] == "code"]
    fresh_cells = [cell for cell in fresh["cells"] if cell["cell_type"] == "code"]
    if len(committed_cells) != len(fresh_cells):
        return [f"{len(committed_cells)} code cells committed, {len(fresh_cells)} executed"]
    differences = []
    for number, (old, new) in enumerate(zip(committed_cells, fresh_cells), start=1):
        vary = VARY_TAG in old.get("metadata", {}).get("tags", [])
        before, after = (masked(text_outputs(cell), vary).splitlines(keepends=True) for cell in (old, new))
        if before != after:
            first_line = "".join(old["source"]).splitlines()[0] if old["source"] else ""
            diff = difflib.unified_diff(before, after, "committed", "fresh execution", n=1)
            differences.append(f"code cell {number} ({first_line!r}):\n" + "".join(diff))
    return differences


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_and_matches_its_committed_outputs(path):
    committed = nbformat.read(path, as_version=4)
    fresh = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(fresh, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    differences = output_differences(committed, fresh)
    if differences:
        FRESH_DIR.mkdir(parents=True, exist_ok=True)
        nbformat.write(fresh, FRESH_DIR / path.name)
        pytest.fail(f"{path.name}: committed outputs are stale (fresh execution written to "
                    f"{FRESH_DIR / path.name}):\n\n" + "\n".join(differences), pytrace=False)


def _notebook(*cells):
    return {"cells": [{"cell_type": "code", "source": source, "metadata": {"tags": tags},
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}
                      for source, tags, text in cells]}


def test_a_changed_result_is_reported_and_timings_are_not():
    committed = _notebook(("train()", [], "epoch 2/2: test accuracy 70.44%, 5.2 s, 0x7f00aa\n"),
                          ("bench()", [VARY_TAG], "forward    1.3 GFLOP/s\n"))
    same_story = _notebook(("train()", [], "epoch 2/2: test accuracy 70.44%, 9.8 s, 0x7f11bb\n"),
                           ("bench()", [VARY_TAG], "forward   12.7 GFLOP/s\n"))
    new_story = _notebook(("train()", [], "epoch 2/2: test accuracy 34.90%, 5.2 s, 0x7f00aa\n"),
                          ("bench()", [VARY_TAG], "backward 1.3 GFLOP/s\n"))
    assert output_differences(committed, same_story) == []
    differences = output_differences(committed, new_story)
    assert len(differences) == 2, differences
    assert "-epoch 2/2: test accuracy 70.44%" in differences[0] and "+epoch 2/2: test accuracy 34.90%" in differences[0]
    assert "-forward <n> GFLOP/s" in differences[1] and "+backward <n> GFLOP/s" in differences[1], differences[1]


# --- what a committed notebook may hold, and its exercises' checks ---------------------------------------------------

ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/(?:home|Users|work|tmp|root|usr|opt|var|mnt|private|srv|builds?)/"
                           r"|[A-Za-z]:\\)")


def _output_texts(cell):
    """Every text a committed output of ``cell`` carries: streams (stderr too), every text-like mime type, tracebacks."""
    for output in cell.get("outputs", []):
        if "text" in output:
            yield "".join(output["text"])
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/") or mime.endswith("json"):
                yield value if isinstance(value, str) else "".join(value) if isinstance(value, list) else str(value)
        yield "\n".join(output.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_no_committed_output_holds_an_absolute_path(path):
    notebook = nbformat.read(path, as_version=4)
    found = [(number, match.group(0), text[max(0, match.start() - 40):match.end() + 40])
             for number, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             for text in _output_texts(cell) for match in ABSOLUTE_PATH.finditer(text)]
    found += [(number, str(ROOT), "") for number, cell in enumerate(notebook.cells) if cell.cell_type == "code"
              for text in _output_texts(cell) if str(ROOT) in text]
    assert not found, f"{path.name}: absolute paths in committed outputs (cell index, path, context): {found[:5]}"


def test_the_absolute_path_rule_catches_machine_paths_and_not_relative_ones():
    for text in ("/work/main/reference/op.py:120: RuntimeWarning", "see /home/ana/x.npz", r"C:\Users\ana\x.py",
                 "File /tmp/ipykernel_1/123.py"):
        assert ABSOLUTE_PATH.search(text), text
    for text in ("notebooks/03_train_and_visualize.ipynb", "../docs/learn.md", "1/4 of the MACs", "FLOP/byte",
                 "W1 σ W0, r = 1/4/16", "https://github.com/d-li14/involution"):
        assert not ABSOLUTE_PATH.search(text), text


def _exercises_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebook_exercises", ROOT / "notebooks" / "exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The solutions of the hashed exercises, by notebook and exercise: the notebooks hold only their digests.
SOLUTIONS = {
    ("01_involution_op", "exercise 2"): 67_472,                  # C·C/r + 2·C/r + (C/r)·K²·G + K²·G, C=256, r=4, G=16
    ("01_involution_op", "exercise 3"): 25,                      # (56 + 6 - 12 - 1) // 2 + 1
    ("01_involution_op", "exercise 5"): "even",
    ("01_involution_op", "exercise 6"): 25,                      # the K x K window
    ("02_rednet_complexity", "exercise 1"): 64 * 7 * 7 * 56 * 56,
    ("02_rednet_complexity", "exercise 2"): 9 * 256 * 256 / (49 * 256 + 256 * 64 + 64 * 49 * 16),
    ("02_rednet_complexity", "exercise 3"): 2.808492032,         # count(build("rednet50", kernel_size=11)), fvcore GFLOPs
    ("02_rednet_complexity", "exercise 4"): 64,                  # (C/r)·K²·G = C·K² with G = C/16: C = 16 r
    ("02_rednet_complexity", "exercise 5"): 2.680041472 / 2.577281024,   # K = 9 (77.8) over the default (77.7), fvcore
    ("03_train_and_visualize", "exercise 2"): 48_960 / 9_360,
    ("03_train_and_visualize", "exercise 3"): "b",
    ("04_backward", "exercise 1"): 1 + 3 + 5 + 7,
    ("04_backward", "exercise 3"): 0.5443967,
    ("05_fast_kernels", "exercise 1"): 8 * 64 * 7 * 7 * 56 * 56 * 4,
    ("05_fast_kernels", "exercise 2"): [1, 12],
}
CHECK_CALL = re.compile(r'check\("([^"]+)", (\w+), "([0-9a-f]{16})"\)')


def test_every_hashed_exercise_check_matches_its_solution_and_hides_it():
    exercises = _exercises_module()
    found = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            for name, variable, expected in CHECK_CALL.findall(cell.source):
                found[path.stem, name] = expected
                assert not re.search(rf"^\s*{variable}\s*=(?!=)", cell.source, re.MULTILINE), \
                    f"{path.name} {name}: the check cell assigns the answer variable {variable!r}"
                outputs = "".join(_output_texts(cell))
                assert "not answered yet" in outputs, f"{path.name} {name}: committed with an answer ({outputs!r})"
    assert set(found) == set(SOLUTIONS), (sorted(set(found) - set(SOLUTIONS)), sorted(set(SOLUTIONS) - set(found)))
    wrong = {key: digest for key, digest in found.items() if exercises.digest(key[1], SOLUTIONS[key]) != digest}
    assert not wrong, f"digests that do not match the solution: {wrong}"


def test_exercise_check_reports_unanswered_right_and_wrong(capsys):
    exercises = _exercises_module()
    digest = exercises.digest("exercise 9", 7.456)
    assert digest == exercises.digest("exercise 9", 7.46) != exercises.digest("exercise 9", 7.47)
    assert exercises.digest("exercise 9", " Even ") == exercises.digest("exercise 9", "even")
    assert exercises.digest("exercise 9", (12, 1)) == exercises.digest("exercise 9", [1, 12])
    assert exercises.digest("exercise 9", 25) != exercises.digest("exercise 8", 25)
    for answer, verdict in ((..., "not answered yet"), (7.46, "right"), (7.5, "not right yet")):
        exercises.check("exercise 9", answer, digest)
        assert verdict in capsys.readouterr().out, answer
    for bad in (True, None, {"a": 1}):
        with pytest.raises(TypeError, match="answer: expected a number"):
            exercises.digest("exercise 9", bad)
