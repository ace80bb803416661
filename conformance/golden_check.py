"""Hold an involution kernel to the golden cases of ``involution conformance --export-cases DIR``.

Needs only NumPy, so it can be copied next to a kernel written in C++, CUDA, JAX or Triton and called from Python:
``python golden_check.py DIR package.module[:attr]`` (exit 0: every case passes, 1: a failure).
"""
import importlib
import json
import sys
from pathlib import Path

import numpy as np


def check(directory, forward, backward=None) -> list:
    """Failures of ``forward(x, kernel, stride, padding, dilation)`` (and ``backward(grad_out, x, kernel, stride,
    padding, dilation) -> (grad_x, grad_kernel)``) on every golden case in ``directory``; empty if all pass."""
    failures = []
    for case in json.loads((Path(directory) / "cases.json").read_text())["cases"]:
        arrays = np.load(Path(directory) / case["file"])
        x, kernel = arrays["x"], arrays["kernel"]
        params = tuple(tuple(case[key]) for key in ("stride", "padding", "dilation"))
        answers = {"out": forward(x, kernel, *params)}
        if backward is not None:
            answers["grad_x"], answers["grad_kernel"] = backward(arrays["grad_out"], x, kernel, *params)
        for name, answer in answers.items():
            answer, expected = np.asarray(answer), arrays[name]
            if answer.shape != expected.shape or answer.dtype != x.dtype:
                failures.append(f"{case['name']} {name}: {answer.dtype} {answer.shape}, expected {x.dtype} "
                                f"{expected.shape}; {case['description']}")
                continue
            error = np.abs(answer.astype(np.float64) - expected)
            bad = ~(error <= arrays[f"tolerance_{name}"])  # a NaN is never within the tolerance
            if bad.any():
                worst = np.where(bad, np.nan_to_num(error, nan=np.inf), 0).max()
                failures.append(f"{case['name']} {name}: {bad.sum()} of {bad.size} elements off, largest error "
                                f"{worst:.3e}; {case['description']}")
    return failures


if __name__ == "__main__":
    module, _, attr = sys.argv[2].partition(":")
    target = importlib.import_module(module)
    target = getattr(target, attr) if attr else target
    found = check(sys.argv[1], target.involution2d, getattr(target, "involution2d_backward", None))
    print("\n".join(found) or "every golden case passes")
    sys.exit(1 if found else 0)
