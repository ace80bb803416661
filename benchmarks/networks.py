"""Whole-network CPU timings: torch RedNet-50 with the fast numba op (and the plain tap-loop op) against torch
ResNet-50, eager and (``compiled=True``) ``torch.compile(fullgraph=True)`` with inductor.

Inference (``eval()``, ``torch.no_grad()``) at ``batch x 3 x 224 x 224``, float32, one thread count for torch and
numba. Every network is checked before timing: RedNet fast against taps, each compiled network against its eager
self. The timed calls are interleaved (one call of each network per round, ``repeats`` rounds), so load from other
jobs falls on all of them alike; medians are reported with the load average before and after. Targets (issue 13):
compiled RedNet-50 <= 0.8x compiled ResNet-50 at batch 1; eager <= 0.9x.

Commands: ``python -m involution bench --compile`` (with the op table), or the networks alone:
``python -m involution.benchmarks.networks --compile --batch 1 8 --repeats 10 --json out/bench_networks.json``.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from involution.benchmarks.timing import interleaved_medians

TARGETS = {"eager": 0.9, "compiled": 0.8}  # RedNet-50 / ResNet-50 time ratios the project aims at


def build_networks() -> dict:
    """name -> torch module in eval mode: RedNet-50 (fast op), RedNet-50 (taps op), ResNet-50; same seed."""
    from involution.torch import RedNet, ResNet

    return {"rednet50-fast": RedNet(depth=50, seed=0, backend="fast").eval(),
            "rednet50-taps": RedNet(depth=50, seed=0, backend="taps").eval(),
            "resnet50": ResNet(depth=50, seed=0).eval()}


def parameter_count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def relative_difference(got, expected) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def run(batches=(1,), repeats: int = 5, size: int = 224, compiled: bool = False, log=print) -> dict:
    """Validate, then time each network's forward per batch size (and compiled); rows and ratios, JSON-ready.

    Raises
    ------
    AssertionError
        RedNet fast and taps logits, or a compiled network and its eager self, differ by more than 1e-4 relative
        (float32 through ~50 layers: catches a wrong op, not rounding).
    """
    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    networks = build_networks()
    names = ["rednet50-fast", "resnet50"] + ([] if compiled else ["rednet50-taps"])
    forwards = {(name, "eager"): networks[name] for name in names}
    compile_seconds = {}
    if compiled:
        for name in ("rednet50-fast", "resnet50"):
            forwards[(name, "compiled")] = torch.compile(networks[name], fullgraph=True)
    rows, load_before = [], os.getloadavg()
    for batch in batches:
        images = torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, 3, size, size),
                                                                              dtype=np.float32))
        with torch.no_grad():
            outputs = {}
            for key, forward in forwards.items():
                started = time.perf_counter()
                outputs[key] = forward(images)
                if key[1] == "compiled":  # the first call at a new shape compiles (or recompiles)
                    compile_seconds[f"{key[0]} batch {batch}"] = time.perf_counter() - started
            checks = {("rednet50-fast", "eager"): outputs[("rednet50-fast", "eager")]}
            checks.update({key: outputs[key] for key in outputs if key[1] == "compiled"})
            expected = {"rednet50-fast": networks["rednet50-taps"](images),
                        "resnet50": outputs[("resnet50", "eager")]}
            for (name, mode), got in checks.items():
                error = relative_difference(got, expected[name])
                if not error < 1e-4:
                    raise AssertionError(f"{name} {mode} at batch {batch}: logits differ from the reference "
                                         f"forward by {error:.2e} relative (> 1e-4)")
                log(f"{name} {mode} batch {batch}: logits within {error:.1e} of the reference forward")
            calls = {key: (lambda forward=forward: forward(images)) for key, forward in forwards.items()}
            # no settling: each network mixes torch's ops and the involution op, as a model does
            medians = interleaved_medians(calls, dict.fromkeys(calls, repeats), settle=0)
        for (name, mode), seconds in medians.items():
            rows.append({"network": name, "mode": mode, "batch": batch, "size": size, "forward_ms": 1e3 * seconds,
                         "parameters": parameter_count(networks[name])})
            log(f"{name:>14s} {mode:>8s}  batch {batch}  {size}x{size}  {1e3 * seconds:8.1f} ms")
    ratios = []
    for batch in batches:
        for mode in ("eager", "compiled") if compiled else ("eager",):
            time_of = {row["network"]: row["forward_ms"] for row in rows
                       if row["batch"] == batch and row["mode"] == mode}
            ratio = time_of["rednet50-fast"] / time_of["resnet50"]
            met = ratio <= TARGETS[mode] if batch == 1 else None
            ratios.append({"batch": batch, "mode": mode, "rednet50_over_resnet50": ratio, "target": TARGETS[mode],
                           "target_met": met})
            log(f"RedNet-50 / ResNet-50, {mode}, batch {batch}: {ratio:.2f}"
                + ("" if met is None else f" (target <= {TARGETS[mode]}: {'met' if met else 'NOT met'})"))
    return {"rows": rows, "ratios": ratios, "threads": torch.get_num_threads(),
            "compile_seconds": compile_seconds,
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True) (inductor)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if min(args.batch) < 1 or args.repeats < 1:
        parser.error(f"--batch and --repeats must be >= 1, got --batch {args.batch} --repeats {args.repeats}")
    results = {"command": " ".join(["python -m involution.benchmarks.networks", *argv]),
               **run(args.batch, args.repeats, compiled=args.compile)}
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
