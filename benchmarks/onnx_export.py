"""ONNX export of RedNet-26 or of one involution layer with three formulations of the op: export seconds, graph
nodes, ONNX Runtime milliseconds.

* ``compact``: the default model (the fast op), exported through the op's registered translation
  (:mod:`involution.torch.export`: two Gathers, a multiply and a sum per layer);
* ``taps``: the model on the ``"taps"`` backend (one strided slice, multiply and add per tap);
* ``unfold``: the common ``nn.functional.unfold`` involution (:func:`unfold_involution2d`), swapped into every layer.

Exports run in interleaved rounds (one of each formulation per round, medians). Every exported graph is run in
ONNX Runtime (CPU, ``--threads`` intra-op threads, batch 1 at ``--size``) and checked against the eager model
(within ``2**10 * eps(float32)`` of the largest output) before its time is taken; ORT times are interleaved medians
(``involution.benchmarks.op_cpu.interleaved_medians``), beside the eager model on the fast op. The load average is
printed before and after.

Command (docs/deploy.md): ``python -m involution.benchmarks.onnx_export --model rednet26 --exporter dynamo
--formulations compact unfold --repeats 3``.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from involution.arguments import positive_int
from involution.benchmarks.op_cpu import interleaved_medians

FORMULATIONS = ("compact", "taps", "unfold")
EXPORTERS = ("dynamo", "torchscript")


def unfold_involution2d(x, kernel, stride=1, padding=0, dilation=1):
    """The usual PyTorch involution: ``F.unfold`` (a ``Kh*Kw``-fold copy of the input), multiply, sum."""
    import torch.nn.functional as F

    batch, channels = x.shape[:2]
    _, groups, kernel_h, kernel_w, out_h, out_w = kernel.shape
    kernel_h, kernel_w = int(kernel_h), int(kernel_w)  # F.unfold's kernel_size: constants for the TorchScript tracer
    columns = F.unfold(x, (kernel_h, kernel_w), dilation, padding, stride)
    columns = columns.view(batch, groups, channels // groups, kernel_h * kernel_w, out_h, out_w)
    weights = kernel.reshape(batch, groups, 1, kernel_h * kernel_w, out_h, out_w)
    return (columns * weights).sum(dim=3).view(batch, channels, out_h, out_w)


def build(model_name: str, formulation: str):
    """``(model, input)``: RedNet-26, or RedNet-26's first stage-1 involution (64 channels, 7x7, at 56x56)."""
    import torch

    from involution.torch import Involution2d, RedNet

    backend = "taps" if formulation == "taps" else "fast"
    if model_name == "rednet26":
        model, shape = RedNet(26, backend=backend), (1, 3, 224, 224)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, shape = Involution2d(64, 7, backend=backend), (1, 64, 56, 56)
    if formulation == "unfold":
        for module in model.modules():
            if isinstance(module, Involution2d):
                module._involution2d = unfold_involution2d  # the layer's op, as set_backend sets it
    return model.eval(), torch.randn(shape, generator=torch.Generator().manual_seed(0))


def export(model, x, path: Path, exporter: str) -> None:
    """``torch.onnx.export`` with dynamic batch, height and width."""
    import torch

    if exporter == "dynamo":
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
        torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=(dims,), verbose=False).save(str(path))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})


def run(model_name="rednet26", exporter="dynamo", formulations=FORMULATIONS, repeats=3, ort_repeats=10, threads=1,
        log=print) -> dict:
    """Export, check and time; returns ``{formulation: {"export_s", "nodes", "ort_ms"}, "eager_ms", "load"}``."""
    import onnx
    import onnxruntime
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    load_before = os.getloadavg()
    models = {name: build(model_name, name) for name in formulations}
    folder = Path(tempfile.mkdtemp(prefix="involution-onnx-"))
    export_seconds = {name: [] for name in formulations}
    for _ in range(repeats):
        for name, (model, x) in models.items():
            started = time.perf_counter()
            export(model, x, folder / f"{name}.onnx", exporter)
            export_seconds[name].append(time.perf_counter() - started)
            log(f"  exported {name} ({exporter}) in {export_seconds[name][-1]:.1f} s")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    calls, results = {}, {}
    for name, (model, x) in models.items():
        path = folder / f"{name}.onnx"
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: x.numpy()}
        with torch.no_grad():
            expected = model(x).numpy()
        error = float(np.abs(session.run(None, feeds)[0] - expected).max())
        tolerance = 2 ** 10 * np.finfo(np.float32).eps * float(np.abs(expected).max())
        if not error <= tolerance:
            raise AssertionError(f"{name}: onnxruntime differs from eager by {error:.3g} > {tolerance:.3g}")
        results[name] = {"export_s": float(np.median(export_seconds[name])), "export_s_all": export_seconds[name],
                         "nodes": len(onnx.load(str(path)).graph.node), "max_abs_error": error}
        calls[name] = lambda session=session, feeds=feeds: session.run(None, feeds)
    eager, x = build(model_name, "compact")

    def eager_call():
        with torch.no_grad():
            eager(x)

    calls["eager fast op"] = eager_call
    medians = interleaved_medians(calls, {name: ort_repeats for name in calls})
    for name in formulations:
        results[name]["ort_ms"] = 1e3 * medians[name]
    results["eager_ms"] = 1e3 * medians["eager fast op"]
    results["load_average"] = (load_before, os.getloadavg())
    return results


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("rednet26", "layer"), default="rednet26")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--formulations", nargs="+", choices=FORMULATIONS, default=list(FORMULATIONS))
    parser.add_argument("--repeats", type=positive_int, default=3, help="export rounds, median reported (3)")
    parser.add_argument("--ort-repeats", type=positive_int, default=10, help="timed ORT rounds (10)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch, numba and ORT threads (1)")
    args = parser.parse_args(argv)
    results = run(args.model, args.exporter, args.formulations, args.repeats, args.ort_repeats, args.threads)
    print(f"{args.model}, {args.exporter} exporter, batch 1, {args.threads} thread(s); medians")
    print("| formulation | export (s) | nodes | onnxruntime (ms) |")
    print("|---|--:|--:|--:|")
    for name in args.formulations:
        row = results[name]
        print(f"| {name} | {row['export_s']:.1f} | {row['nodes']} | {row['ort_ms']:.1f} |")
    print(f"eager model on the fast op: {results['eager_ms']:.1f} ms")
    before, after = results["load_average"]
    print(f"load average before {' '.join(f'{v:.2f}' for v in before)}, after {' '.join(f'{v:.2f}' for v in after)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
