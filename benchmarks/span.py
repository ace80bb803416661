"""The span convolution fused with the op against the two steps, on RedNet-50's involution layers and network.

Per layer (float32, 224x224 input, ``channels_last`` torch tensors as the network holds them): the two-step path an
``Involution2d`` runs with ``fuse_span = False`` (``conv2``, a 1x1 convolution with bias through torch, then the
fast op on the ``channels_last`` kernel it gives) against ``torch.ops.involution.involution2d_span``
(``involution.fast.cpu_forward_span``), each checked against the other first, calls interleaved, medians; the
total weights each layer by its count in RedNet-50. The fused pass runs on torch's OpenMP threads where torch has
them (``involution.torch.span.torch_openmp``), and again on numba's threads (``USE_TORCH_OPENMP = False``).
``--network`` also times RedNet-50's forward (``channels_last``, eager with BN folded and compiled with inductor's
freezing, as ``involution.benchmarks.networks`` runs it) with ``fuse_span`` on (on torch's and on numba's threads)
and off, interleaved, beside ResNet-50 in the same configuration::

    python -m involution.benchmarks.span --threads 1 --batch 1 8 --repeats 9 [--network]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .layers import REDNET_LAYERS, layer_geometry, layer_name
from .timing import interleaved_times, torch_sgemm_gflops


def on_numba_threads(call):
    """``call`` with the fused pass on numba's threads instead of torch's OpenMP threads."""
    from involution.torch import span

    def run():
        previous, span.USE_TORCH_OPENMP = span.USE_TORCH_OPENMP, False
        try:
            return call()
        finally:
            span.USE_TORCH_OPENMP = previous

    return run

# How many times RedNet-50 runs each of REDNET_LAYERS: the stem's involution, then stages of 3, 4, 6, 3 blocks
# whose first block of stages 2-4 is the strided one.
REDNET50_COUNTS = (1, 3, 1, 3, 1, 5, 1, 2)
REDUCTION = 4  # RedNet's kernel generation: C -> C / 4 hidden channels
RELATIVE_TOLERANCE = 1e-5  # float32, the two paths sum in different orders


def layer_calls(layer, batch: int, seed: int = 0):
    """``(two-step call, fused call, FLOPs)`` of ``layer`` at ``batch``: an ``Involution2d``'s span convolution and
    op on ``channels_last`` inputs."""
    import torch

    from involution.torch import ops
    from involution.torch.span import involution2d_span

    geometry = layer_geometry(layer, batch)
    _, groups, kernel_h, kernel_w, out_h, out_w = geometry.kernel_shape
    hidden_channels = layer.channels // REDUCTION
    generator = torch.Generator().manual_seed(seed)
    last = torch.channels_last
    x = torch.randn(geometry.x_shape, generator=generator).contiguous(memory_format=last)
    hidden = torch.randn((batch, hidden_channels, out_h, out_w), generator=generator).relu().contiguous(
        memory_format=last)
    conv = torch.nn.Conv2d(hidden_channels, groups * kernel_h * kernel_w, 1)
    hyper = (geometry.stride, geometry.padding, geometry.dilation)

    def two_step():
        kernel = conv(hidden)
        return ops.involution2d(x, kernel.view(batch, groups, kernel_h, kernel_w, out_h, out_w), *hyper)

    def fused():
        return involution2d_span(x, hidden, conv.weight, conv.bias, (kernel_h, kernel_w), *hyper)

    return two_step, fused, layer_flops(layer, batch)["span_and_op"]


def layer_flops(layer, batch: int) -> dict:
    """FLOPs (2 per multiply-add) of ``layer``'s kernel generation and op at ``batch``: ``{"span_and_op": ...,
    "reduce": ...}``, the span convolution (C/4 -> G*Kh*Kw) and the op, which the fused pass does, and the reduce
    convolution (C -> C/4) at the output positions, which it does not."""
    _, groups, kernel_h, kernel_w, out_h, out_w = layer_geometry(layer, batch).kernel_shape
    hidden_channels = layer.channels // REDUCTION
    positions = batch * out_h * out_w
    return {"span_and_op": 2 * positions * kernel_h * kernel_w * (groups * hidden_channels + layer.channels),
            "reduce": 2 * positions * layer.channels * hidden_channels}


def involution_flops() -> dict:
    """FLOPs of RedNet-50's involution layers per image (:func:`layer_flops`), each layer weighted by its count:
    ``{"span_and_op": ..., "reduce": ..., "total": ...}``."""
    flops = {"span_and_op": 0, "reduce": 0}
    for layer, count in zip(REDNET_LAYERS, REDNET50_COUNTS):
        for key, value in layer_flops(layer, 1).items():
            flops[key] += count * value
    return {**flops, "total": flops["span_and_op"] + flops["reduce"]}


def time_layers(batches, rounds: int, log=print) -> list[dict]:
    """Rows ``{layer, batch, two_step_ms, fused_ms, fused_numba_ms, speedup, fused_gflops}`` per layer and batch
    (``fused_numba_ms``: the fused pass on numba's threads), then a total row
    per batch weighted by REDNET50_COUNTS; each layer's two paths checked against each other first
    (AssertionError beyond RELATIVE_TOLERANCE)."""
    import torch

    rows = []
    for batch in batches:
        totals = [0.0, 0.0, 0.0]
        for layer, count in zip(REDNET_LAYERS, REDNET50_COUNTS):
            two_step, fused, flops = layer_calls(layer, batch)
            with torch.no_grad():
                expected, got = two_step(), fused()
                error = float((got - expected).abs().max() / expected.abs().max())
                assert error <= RELATIVE_TOLERANCE, f"{layer_name(layer)} batch {batch}: fused differs by {error:.1e}"
                times = interleaved_times({"two_step": two_step, "fused": fused,
                                           "fused_numba": on_numba_threads(fused)}, rounds)
            medians = {key: float(np.median(value)) * 1e3 for key, value in times.items()}
            for index, key in enumerate(("two_step", "fused", "fused_numba")):
                totals[index] += count * medians[key]
            row = {"layer": layer_name(layer), "batch": batch, "two_step_ms": medians["two_step"],
                   "fused_ms": medians["fused"], "fused_numba_ms": medians["fused_numba"],
                   "speedup": medians["two_step"] / medians["fused"],
                   "fused_gflops": flops / medians["fused"] / 1e6, "relative_error": error}
            rows.append(row)
            log(f"{row['layer']:>16s} batch {batch}: two steps {row['two_step_ms']:7.2f} ms, fused "
                f"{row['fused_ms']:7.2f} ms ({row['fused_gflops']:5.1f} GFLOP/s), {row['speedup']:.2f}x; on numba's "
                f"threads {row['fused_numba_ms']:7.2f} ms")
        rows.append({"layer": "RedNet-50 (weighted)", "batch": batch, "two_step_ms": totals[0], "fused_ms": totals[1],
                     "fused_numba_ms": totals[2], "speedup": totals[0] / totals[1]})
        log(f"RedNet-50's involution layers, batch {batch}: two steps {totals[0]:.1f} ms, fused {totals[1]:.1f} ms, "
            f"{totals[0] / totals[1]:.2f}x; fused on numba's threads {totals[2]:.1f} ms")
    return rows


def time_network(batches, rounds: int, log=print) -> list[dict]:
    """Rows ``{network, mode, batch, median_ms, min_ms, max_ms}``: RedNet-50 with ``fuse_span`` on and off and
    ResNet-50, ``channels_last``, eager (BN folded) and compiled (frozen), interleaved."""
    import torch

    from . import networks

    rednet = networks.build_network("rednet50")
    two_step = networks.build_network("rednet50")
    two_step.load_state_dict(rednet.state_dict())
    for module in two_step.modules():
        if hasattr(module, "fuse_span"):
            module.fuse_span = False
    models = {"rednet50 fused": rednet, "rednet50 fused, numba": rednet, "rednet50 two steps": two_step,
              networks.BASELINE: networks.build_network(networks.BASELINE)}
    rows = []
    with networks.compile_limits():
        for batch in batches:
            images = torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, 3, 224, 224),
                                                                                  dtype=np.float32))
            calls = {}
            with torch.no_grad():
                for mode in ("eager", "compiled"):
                    for name, model in models.items():
                        forward, convert = networks.inference_variant(model, "channels_last", mode == "eager",
                                                                      mode == "compiled")
                        inputs = convert(images)
                        calls[(name, mode)] = lambda forward=forward, inputs=inputs: forward(inputs)
                        if name.endswith(", numba"):
                            calls[(name, mode)] = on_numba_threads(calls[(name, mode)])
                        networks.check_close(calls[(name, mode)](), model(images), f"{name} {mode}", log)
                times = interleaved_times(calls, rounds)
            for (name, mode), seconds in times.items():
                row = {"network": name, "mode": mode, "batch": batch, **networks.summary(seconds)}
                rows.append(row)
                log(f"{name:>19s} {mode:>8s} batch {batch}: {row['median_ms']:8.1f} ms ({row['min_ms']:.1f} to "
                    f"{row['max_ms']:.1f})")
            for mode in ("eager", "compiled"):
                time_of = {row["network"]: row["median_ms"] for row in rows if row["mode"] == mode
                           and row["batch"] == batch}
                baseline = time_of[networks.BASELINE]
                log(f"{mode} batch {batch}: RedNet-50 / ResNet-50 fused {time_of['rednet50 fused'] / baseline:.2f} "
                    f"(on numba's threads {time_of['rednet50 fused, numba'] / baseline:.2f}), two steps "
                    f"{time_of['rednet50 two steps'] / baseline:.2f}")
    return rows


def main(argv=None) -> int:
    from involution.arguments import int_at_least, positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--repeats", type=positive_int, default=9, help="timed rounds, medians (default 9)")
    parser.add_argument("--threads", type=int_at_least(1, os.cpu_count() or 1),
                        help="torch and numba threads (default numba's setting)")
    parser.add_argument("--network", action="store_true", help="also RedNet-50 fused and not, beside ResNet-50")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import numba
    import torch

    import involution.fast.runtime  # noqa: F401  (numba's threading layer chosen before numba starts threads)

    if args.threads:
        numba.set_num_threads(args.threads)
    torch.set_num_threads(numba.get_num_threads())
    print(f"threads {numba.get_num_threads()}, load average before {os.getloadavg()[0]:.2f}")
    flops = involution_flops()
    print(f"RedNet-50's involution layers: {flops['total'] / 1e9:.3f} GFLOP per image (span convolution and op "
          f"{flops['span_and_op'] / 1e9:.3f}, reduce convolution {flops['reduce'] / 1e9:.3f})")
    ceiling = torch_sgemm_gflops()
    print(f"torch sgemm 2048^3 on {torch.get_num_threads()} threads: {ceiling:.0f} GFLOP/s; at that rate the layers "
          f"would take {flops['total'] / ceiling / 1e6:.2f} ms per image")
    time_layers(args.batch, args.repeats)
    if args.network:
        time_network(args.batch, max(3, args.repeats // 2))
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
