"""Cold start of the fast CPU op: each pass's first call in a new process, with numba's cache empty (the call compiles
its kernel) and filled (it loads it), and the wall time of ``involution warmup``.

``python -m involution.benchmarks.cold_start [--repeats 3] [--warmup-runs 1]``: per pass (forward, grad_x,
grad_kernel), ``repeats`` rounds of a new process with an empty ``NUMBA_CACHE_DIR`` timing its first call, then a new
process on that cache timing its first call; the import of ``involution.fast.cpu`` is not counted (about 0.3 s). The
geometry is RedNet-50's 64@56 layer at batch 2: a (2, 64, 56, 56) float32 input, 7x7 kernel, 4 groups, padding 3
(versions: ``involution.fast.cpu.versions_for``). Prints medians in seconds (wall and, for the first call, the process's
CPU time, which a busy machine inflates less) and the load average before and after (docs/performance.md, "Cold
start").
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PASSES = ("forward", "grad_x", "grad_kernel")
FIRST_CALL = """
import sys, time
import numpy as np
from involution.fast import cpu
from involution.spec import check_geometry
name = sys.argv[1]
g = check_geometry((2, 64, 56, 56), (2, 4, 7, 7, 56, 56), 1, 3, 1)
rng = np.random.default_rng(0)
first, second, result = cpu.pass_shapes(name, g)
arrays = (rng.standard_normal(first).astype(np.float32), rng.standard_normal(second).astype(np.float32),
          np.empty(result, np.float32))
wall, cpu_time = time.perf_counter(), time.process_time()
version = cpu.run(name, arrays, g)
print(version, time.perf_counter() - wall, time.process_time() - cpu_time)
"""


def first_call(name: str, cache: str) -> tuple[int, float, float]:
    """``(version, wall seconds, CPU seconds)`` of pass ``name``'s first call in a new process on cache folder
    ``cache``."""
    result = subprocess.run([sys.executable, "-c", FIRST_CALL, name], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NUMBA_CACHE_DIR": cache})
    if result.returncode != 0:
        raise RuntimeError(f"the {name} first call failed:\n{result.stderr}")
    version, wall, cpu_time = result.stdout.split()
    return int(version), float(wall), float(cpu_time)


def warmup_seconds() -> float:
    """Wall seconds of ``python -m involution warmup --dtype float32`` in a new process with an empty cache."""
    with tempfile.TemporaryDirectory(prefix="involution-cold-") as cache:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "involution", "warmup", "--dtype", "float32"],
                                capture_output=True, text=True, timeout=1800,
                                env={**os.environ, "NUMBA_CACHE_DIR": cache})
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"involution warmup failed:\n{result.stderr}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m involution.benchmarks.cold_start",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per pass (default 3): medians")
    parser.add_argument("--warmup-runs", type=int, default=1, help="runs of involution warmup (default 1; 0: none)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup_runs < 0:
        parser.error(f"--repeats must be >= 1 and --warmup-runs >= 0, got {args.repeats} and {args.warmup_runs}")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print("| pass | version | first call s | first call CPU s | cached call s |")
    print("|---|---|---|---|---|")
    for name in PASSES:
        cold, cached = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="involution-cold-") as cache:
                cold.append(first_call(name, cache))
                cached.append(first_call(name, cache))
        print(f"| {name} | v{cold[0][0]} | {statistics.median(c[1] for c in cold):.1f} | "
              f"{statistics.median(c[2] for c in cold):.1f} | {statistics.median(c[1] for c in cached):.2f} |",
              flush=True)
    if args.warmup_runs:
        seconds = [warmup_seconds() for _ in range(args.warmup_runs)]
        print(f"involution warmup --dtype float32: {statistics.median(seconds):.0f} s (median of {len(seconds)})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
