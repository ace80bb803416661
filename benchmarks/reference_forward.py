"""Forward time of the NumPy RedNet-50 (eval, float32, 224x224): the reference op and the numba CPU op.

Both backends share one set of weights; their logits are compared before anything is timed. GFLOP/s uses the
``full`` convention of ``involution.reference.complexity`` (2 FLOPs per multiply-add plus element-wise ops).

Run: ``python -m involution.benchmarks.reference_forward [--depth 50] [--batch 1] [--size 224] [--repeats 5]``
"""
from __future__ import annotations

import argparse

import numpy as np

from involution.benchmarks.timing import median_seconds
from involution.reference.complexity import count
from involution.reference.rednet import RedNet


def run(depth: int = 50, batch: int = 1, size: int = 224, repeats: int = 5, log=print) -> list[dict]:
    """Validate fast-cpu against the reference logits (when numba is present), then time each backend; one row each."""
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    flops = count(RedNet(depth), (size, size), batch).total("full").flops
    models = {"reference": RedNet(depth).eval()}
    try:
        models["fast-cpu"] = RedNet(depth, backend="fast-cpu").eval()
    except ImportError as error:
        log(f"fast-cpu backend unavailable, timing the reference only: {error}")
    if "fast-cpu" in models:
        expected, got = models["reference"](images), models["fast-cpu"](images)
        error = float(np.abs(got - expected).max() / np.abs(expected).max())
        if not error < 1e-4:  # float32 through ~50 layers: catches a wrong op, not rounding
            raise AssertionError(f"RedNet-{depth} logits, fast-cpu vs reference: max relative difference {error:.2e}")
        log(f"RedNet-{depth} logits, fast-cpu vs reference op: max relative difference {error:.1e}")
    rows = []
    for backend, model in models.items():
        seconds = median_seconds(lambda: model(images), repeats)
        rows.append({"network": f"rednet{depth}", "backend": backend, "batch": batch, "size": size,
                     "forward_ms": 1e3 * seconds, "gflops_per_s": flops / seconds / 1e9})
        log(f"NumPy RedNet-{depth} ({backend:8s} op)  batch {batch}  {size}x{size}  float32 eval  "
            f"median {1e3 * seconds:7.1f} ms of {repeats}  {flops / 1e9:.2f} GFLOP  "
            f"{flops / seconds / 1e9:5.1f} GFLOP/s")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.depth, args.batch, args.size, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
