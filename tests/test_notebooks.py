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
