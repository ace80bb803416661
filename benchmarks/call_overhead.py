"""What a call of the fast CPU forward spends outside its kernel (microseconds per call).

Per shape, medians of interleaved calls of: the NumPy front door ``fast.cpu.involution2d`` (validation, version
choice, dynamic threads, the kernel's plan and numba's dispatch, the kernel); the numbered kernel as
``forward_versions`` calls it (plan, dispatch, kernel: no validation); the validation alone
(``spec.check_involution2d``); and the torch op ``involution.torch.ops.involution2d`` on the same arrays (no autograd
graph). The front door minus the kernel call is the overhead of the front door; at batch 1 on RedNet-50's smallest
layer it is a visible share of the call. Results are checked bitwise equal before anything is timed.

Run: ``python -m involution.benchmarks.call_overhead [--threads 1] [--repeats 2001]``
"""
from __future__ import annotations

import argparse

import numpy as np

from involution.arguments import int_at_least, positive_int
from involution.benchmarks.forward_versions import kernel_call
from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry, random_inputs
from involution.benchmarks.timing import interleaved_medians
from involution.spec import check_geometry, check_involution2d

LEGEND = ("Microseconds per call, medians of interleaved calls: front door = involution.fast.cpu.involution2d (checks, "
          "version choice, dynamic threads, kernel); kernel call = the numbered kernel v<n> alone, as "
          "forward_versions calls it; validation = spec.check_involution2d alone; torch op = "
          "involution.torch.ops.involution2d without autograd. Overheads are differences of those medians.")


def shapes() -> dict:
    """name -> geometry: a tiny call, where the kernel is almost free, and RedNet-50's smallest involution layer at
    batch 1 (benchmarks/layers.py)."""
    return {"tiny 1x16x4x4, 3x3": check_geometry((1, 16, 4, 4), (1, 1, 3, 3, 4, 4), 1, 1, 1),
            "512@7 K7 s1, batch 1": layer_geometry(REDNET_LAYERS[-1], 1)}


def run(threads: int = 1, repeats: int = 2001, log=print) -> list[dict]:
    """One row per shape of :func:`shapes` (:func:`time_shape`), on ``threads`` numba and torch threads (the
    caller's counts restored after)."""
    import numba
    import torch

    previous = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    try:
        return [time_shape(name, geometry, repeats, log) for name, geometry in shapes().items()]
    finally:
        numba.set_num_threads(previous[0])
        torch.set_num_threads(previous[1])


def time_shape(name: str, geometry, repeats: int, log=print) -> dict:
    """Check that the kernel call and the torch op give the front door's result bitwise, then time the four calls
    interleaved; one JSON-ready row: median microseconds, and the overheads as differences of medians."""
    import numba
    import torch

    from involution.fast import cpu
    from involution.torch import ops

    x, kernel, _ = random_inputs(geometry, np.float32, seed=1)
    params = geometry.hyper_parameters
    x_tensor, kernel_tensor = torch.from_numpy(x), torch.from_numpy(kernel)

    def torch_op():
        with torch.no_grad():
            return ops.involution2d(x_tensor, kernel_tensor, *params).numpy()

    version = cpu.choose_version("forward", geometry)
    calls = {"front door": lambda: cpu.involution2d(x, kernel, *params),
             "kernel call": kernel_call("forward", version, geometry, x, kernel, None),
             "validation": lambda: check_involution2d(x, kernel, *params),
             "torch op": torch_op}
    expected = calls["front door"]()
    for check in ("kernel call", "torch op"):
        if not np.array_equal(calls[check](), expected):
            raise AssertionError(f"{name}: the {check} and the front door disagree")
    seconds = interleaved_medians(calls, dict.fromkeys(calls, repeats), settle=0)
    row = {"shape": name, "threads": numba.get_num_threads(), "forward_version": version,
           "us": {call: 1e6 * value for call, value in seconds.items()}}
    row["front_door_overhead_us"] = row["us"]["front door"] - row["us"]["kernel call"]
    row["torch_op_overhead_us"] = row["us"]["torch op"] - row["us"]["front door"]
    log(f"{name:22s} v{version}, {row['threads']} thread(s): "
        + ", ".join(f"{call} {us:.1f}" for call, us in row["us"].items())
        + f" us; front door - kernel call {row['front_door_overhead_us']:.1f} us, torch op - front door "
        f"{row['torch_op_overhead_us']:.1f} us (medians of {repeats})")
    return row


def main(argv=None) -> None:
    import numba

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int_at_least(1, numba.config.NUMBA_NUM_THREADS), default=1,
                        help="numba and torch threads, at most the threads numba may use (default 1)")
    parser.add_argument("--repeats", type=positive_int, default=2001,
                        help="timed calls of each, interleaved (default 2001)")
    args = parser.parse_args(argv)
    print(LEGEND)
    run(args.threads, args.repeats)


if __name__ == "__main__":
    main()
