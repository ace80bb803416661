"""The fast forward as a model calls it, beside the settled protocol of ``involution bench``, in one process.

``involution bench`` times each implementation in the steady state of its own repeated calls ("settled",
docs/performance.md, "Timing protocol"). In a PyTorch model the op never runs after itself: it runs right after torch
ops, whose GNU OpenMP threads keep spinning on the cores numba's threads need. This benchmark times the public front
door (:func:`involution.involution2d` on NumPy arrays, dynamic threads as configured), the ``torch.compile``d tap loop
and the same-shape depthwise convolution on RedNet-50's involution layers twice, interleaved in rounds:

* **in context**: one call of each per round, no settling (:func:`involution.benchmarks.timing.interleaved_times`):
  the fast op follows the depthwise conv, the tap loop follows the fast op, the conv follows the tap loop;
* **settled**: each timed call after 20 ms of its own calls (:func:`involution.benchmarks.timing.interleaved_medians`).

It prints, per layer and as geometric means, the compiled tap loop's and the depthwise conv's time over the fast op's
(above 1: the fast op is faster) under both protocols, and each implementation's in-context / settled time. Results
are checked against the float64 NumPy reference before anything is timed.

Run: ``python -m involution.benchmarks.in_context [--batch 8 1] [--rounds 15] [--threads 2]``
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from involution.arguments import positive_int
from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry, layer_name, random_inputs
from involution.benchmarks.timing import interleaved_medians, interleaved_times

COLUMNS = ("taps/fast in context", "dw conv/fast in context", "taps/fast settled", "dw conv/fast settled",
           "fast in context/settled", "taps in context/settled", "dw conv in context/settled")


def layer_ratios(layer, batch: int, rounds: int) -> tuple[float, ...]:
    """The ratios of :data:`COLUMNS` for one layer at ``batch``."""
    import torch
    import torch.nn.functional as F

    import involution
    from involution.benchmarks.op_cpu import compiled_taps
    from involution.conformance import tolerances

    geometry = layer_geometry(layer, batch)
    x, kernel, _ = random_inputs(geometry, np.float32, seed=batch)
    params = (geometry.stride, geometry.padding, geometry.dilation)
    x_tensor, kernel_tensor = torch.from_numpy(x), torch.from_numpy(kernel)
    weight = torch.randn(geometry.channels, 1, geometry.kernel_h, geometry.kernel_w,
                         generator=torch.Generator().manual_seed(0))
    taps = compiled_taps()

    def fast():
        return involution.involution2d(x, kernel, *params)

    def tap_loop():
        with torch.no_grad():
            return taps(x_tensor, kernel_tensor, *params)

    def depthwise():
        with torch.no_grad():
            return F.conv2d(x_tensor, weight, stride=geometry.stride, padding=geometry.padding,
                            dilation=geometry.dilation, groups=geometry.channels)

    for name, call in (("fast", fast), ("taps", lambda: tap_loop().numpy())):
        tolerances.assert_matches_reference({"out": call()}, x, kernel, geometry, f"{name}, {layer_name(layer)}")
    calls = {"fast": fast, "taps": tap_loop, "dw": depthwise}
    in_context = {name: statistics.median(times) for name, times in interleaved_times(calls, rounds).items()}
    settled = interleaved_medians(calls, {name: rounds for name in calls})
    return (in_context["taps"] / in_context["fast"], in_context["dw"] / in_context["fast"],
            settled["taps"] / settled["fast"], settled["dw"] / settled["fast"],
            *(in_context[name] / settled[name] for name in calls))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m involution.benchmarks.in_context", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[8, 1], help="batch sizes (default 8 1)")
    parser.add_argument("--rounds", type=positive_int, default=15, help="timed calls of each per protocol (15)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch's and numba's threads (default 2)")
    args = parser.parse_args(argv)

    import os

    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"threads {args.threads}; load average before {os.getloadavg()[0]:.2f}")
    print("layer".ljust(16) + "".join(column.rjust(len(column) + 2) for column in COLUMNS))
    for batch in args.batch:
        rows = []
        for layer in REDNET_LAYERS:
            rows.append(layer_ratios(layer, batch, args.rounds))
            label = f"B{batch} {layer_name(layer)}"
            print(label.ljust(16) + "".join(f"{value:{len(column) + 2}.2f}" for value, column in zip(rows[-1], COLUMNS)),
                  flush=True)
        means = [statistics.geometric_mean(column) for column in zip(*rows)]
        print(f"B{batch} geo. mean".ljust(16) + "".join(f"{value:{len(column) + 2}.2f}"
                                                          for value, column in zip(means, COLUMNS)))
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
