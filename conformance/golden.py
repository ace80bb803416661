"""Golden cases: the core cases and a seeded sample of the suite's random cases, written as files that a kernel
outside Python can be held to (``involution conformance --export-cases DIR``; the format is documented in
docs/conformance.md, the checker is :mod:`~involution.conformance.golden_check`).

``DIR/cases.json`` lists the cases; each case's arrays are in ``DIR/<name>.npz``: the inputs ``x``, ``kernel``,
``grad_out`` (in the case's dtype), the expected ``out``, ``grad_x``, ``grad_kernel`` (float64, from the PyTorch
oracle and autograd) and an elementwise ``tolerance_<quantity>`` for each (float64; the suite's bound,
:mod:`~involution.conformance.tolerances`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from hypothesis import Phase, given, seed, settings

from involution.arguments import prepare_output, write_atomically
from involution.conformance.adapters import torch_oracle
from involution.conformance.core import CORE, core_case, describe
from involution.conformance.strategies import cases
from involution.conformance.tolerances import bound, forward_terms, grad_kernel_terms, grad_x_terms, magnitudes

FORMAT = "involution-golden-cases/1"
SAMPLE_SEED = 20210616  # the sample of random cases is the same on every machine and every run


def sampled_cases(count: int):
    """``count`` cases drawn by the suite's strategy (:func:`~involution.conformance.strategies.cases`), the
    same ones every time (a fixed hypothesis seed, no example database)."""
    drawn = []

    @seed(SAMPLE_SEED)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate], derandomize=False)
    @given(case=cases())
    def collect(case):
        if len(drawn) < count and all(case.seed != other.seed for other in drawn):
            drawn.append(case)

    collect()
    return drawn


def golden_arrays(geometry, x, kernel, grad_out) -> dict:
    """Inputs, the oracle's float64 ``out``, ``grad_x``, ``grad_kernel``, and each one's elementwise tolerance."""
    x64, kernel64, grad64 = (a.astype(np.float64) for a in (x, kernel, grad_out))
    params = geometry.hyper_parameters
    expected = {"out": torch_oracle.involution2d(x64, kernel64, *params)}
    expected["grad_x"], expected["grad_kernel"] = torch_oracle.involution2d_backward(grad64, x64, kernel64, *params)
    terms = {"out": forward_terms(geometry), "grad_x": grad_x_terms(geometry),
             "grad_kernel": grad_kernel_terms(geometry)}
    magnitude = dict(zip(terms, magnitudes(x, kernel, geometry, grad_out)))
    tolerances = {f"tolerance_{name}": bound(terms[name], x.dtype, magnitude[name]) for name in terms}
    return {"x": x, "kernel": kernel, "grad_out": grad_out, **expected, **tolerances}


def refuse_to_overwrite(directory, force: bool) -> str | None:
    """Why the golden cases cannot be written to ``directory``, or None: the output-file rule of every command
    (:func:`involution.arguments.prepare_output`) applied to a folder. ``directory`` is not a file; it exists or
    its parent folder does (it is then made); a folder that holds files is written into only with ``force``;
    and a file can be created there (tried, then removed)."""
    path = Path(directory)
    if os.path.lexists(path) and not path.exists():
        return f"--export-cases {directory} is a dangling symbolic link, expected a folder"
    if path.exists() and not path.is_dir():
        return f"--export-cases {directory} is a file, expected a folder"
    if path.is_dir() and any(path.iterdir()) and not force:
        return f"--export-cases folder {directory} is not empty; pass --force to write into it"
    # a file in the folder (or the folder itself, not made yet, in its parent): the folder exists, can be written
    return prepare_output(path / "cases.json" if path.is_dir() else path, True, "--export-cases")


def export(directory, sample: int = 20) -> list[dict]:
    """Write the core cases and ``sample`` random ones to ``directory`` (made if missing, its parent must exist);
    return their entries.

    Check :func:`refuse_to_overwrite` first: this replaces ``cases.json`` and ``<name>.npz`` where they exist,
    each written atomically (:func:`involution.arguments.write_atomically`), ``cases.json`` last.
    """
    path = Path(directory)
    path.mkdir(exist_ok=True)
    rows = []
    for index, entry in enumerate(CORE):
        geometry, dtype, x, kernel, grad_out = core_case(entry)
        rows.append((f"core_{index}", f"core case {describe(entry)}", geometry, dtype, x, kernel, grad_out))
    for index, case in enumerate(sampled_cases(sample)):
        grad_out = np.random.default_rng(case.seed + 1).standard_normal(case.geometry.out_shape).astype(case.dtype)
        rows.append((f"random_{index}", f"random case {case!r}", case.geometry, case.dtype, case.x, case.kernel,
                     grad_out))
    entries = []
    for name, description, geometry, dtype, x, kernel, grad_out in rows:
        arrays = golden_arrays(geometry, x, kernel, grad_out)
        write_atomically(path / f"{name}.npz", lambda temporary, arrays=arrays: np.savez(temporary, **arrays))
        entries.append({"name": name, "file": f"{name}.npz", "description": description, "dtype": str(dtype),
                        "x_shape": list(geometry.x_shape), "kernel_shape": list(geometry.kernel_shape),
                        "stride": list(geometry.stride), "padding": list(geometry.padding),
                        "dilation": list(geometry.dilation),
                        "tolerance": "elementwise |answer - expected| <= tolerance_<quantity>: "
                                     f"(terms + 2) * eps({dtype}) * sum|products|, terms = "
                                     f"{forward_terms(geometry)} (out), {grad_x_terms(geometry)} (grad_x), "
                                     f"{grad_kernel_terms(geometry)} (grad_kernel)"})
    lines = ",\n  ".join(json.dumps(entry) for entry in entries)  # one case a line
    write_atomically(path / "cases.json", f'{{"format": "{FORMAT}", "cases": [\n  {lines}\n]}}\n')
    return entries
