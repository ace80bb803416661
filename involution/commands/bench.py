"""Benchmark the involution op on RedNet-50's layers (fast CPU kernels beside the NumPy reference, torch unfold, the
compiled tap loop and the same-shape depthwise conv), its robustness (under load, threads, fork) and whole networks
(RedNet-50 with each op, ResNet-50); validated against the reference before any timing.
``--backend fast-cuda`` runs the GPU benchmark (involution.benchmarks.op_cuda) instead."""
from __future__ import annotations

import argparse
import json
import os
import sys

from involution.benchmarks.layers import REDNET_LAYERS
from involution.arguments import (
    add_force_argument, int_at_least, output_file, positive_int, prepare_output, write_atomically,
)


def add_arguments(parser) -> None:
    parser.add_argument("--backend", choices=["fast-cpu", "fast-cuda"], default="fast-cpu",
                        help="which numba kernels (backend names of involution.backends; default fast-cpu)")
    parser.add_argument("--batch", type=positive_int, nargs="+", help="batch sizes (cpu default: 1 8)")
    parser.add_argument("--repeats", type=positive_int,
                        help="timed calls per measurement, median reported (cpu default 5)")
    parser.add_argument("--quick", action="store_true", help="cpu: batch 1, 2 repeats, no networks (a smoke run); "
                                                              "with --networks: its quick mode")
    parser.add_argument("--kernel-versions", action="store_true", help="cpu: also time every numbered kernel")
    parser.add_argument("--no-networks", action="store_true", help="cpu: skip the whole-network table")
    parser.add_argument("--networks", action="store_true",
                        help="cpu: only the whole-network benchmark (involution.benchmarks.networks): RedNet-50 "
                             "against ResNet-50 in each one's best configuration, inference and training, eager "
                             "and compiled, time ratios beside the FLOPs ratio (--quick: about 10 minutes)")
    parser.add_argument("--compile", action="store_true",
                        help="cpu: also time torch.compile'd RedNet-50 and ResNet-50 (inductor: minutes of compiling)")
    parser.add_argument("--layers", type=int_at_least(0, len(REDNET_LAYERS) - 1), nargs="+", metavar="INDEX",
                        help="cpu: only these of RedNet-50's 8 involution layers (0-7, benchmarks/layers.py)")
    parser.add_argument("--no-checks", action="store_true", help="cpu: skip the under-load, threads and fork checks")
    parser.add_argument("--threads", type=int_at_least(1, os.cpu_count() or 1),
                        help="cpu: numba and torch threads, at most the cores numba may use (default numba's setting)")
    parser.add_argument("--json", metavar="PATH", type=output_file,
                        help="write the results as JSON (cpu default out/bench_cpu.json, replaced each run); an "
                             "existing PATH only with --force")
    add_force_argument(parser)
    parser.add_argument("--dtype", choices=["float32", "float64"], help="for --backend fast-cuda: default float32")
    parser.add_argument("--plan", action="store_true",
                        help="for --backend fast-cuda: print each layer's v2 launch plan (no GPU needed) and exit")


def _run_cuda(args) -> int:
    from involution.benchmarks import op_cuda

    argv = []
    if args.batch:
        argv += ["--batch", *map(str, args.batch)]
    if args.repeats:
        argv += ["--repeats", str(args.repeats)]
    if args.json:
        argv += ["--json", args.json]
    if args.dtype:
        argv += ["--dtype", args.dtype]
    if args.plan:
        argv += ["--plan"]
    return op_cuda.main(argv)


def _run_networks(args, networks) -> int:
    """``--networks``: the whole-network benchmark alone, with its own defaults (7 rounds; --quick 3)."""
    if args.kernel_versions or args.layers or args.no_networks:
        print("involution bench: --networks times whole networks; --kernel-versions, --layers and --no-networks "
              "are for the op table", file=sys.stderr)
        return 2
    options = argparse.Namespace(**{**vars(args), "networks": None, "no_compile": False, "no_training": False,
                                    "paper_cpu_setting": False,
                                    "json": args.json or os.path.join("out", "bench_networks.json")})
    return networks.run_arguments(options, " ".join(["python -m involution", *sys.argv[1:]]))


def run(args) -> int:
    if args.json:
        error = prepare_output(args.json, args.force, "--json")
        if error:
            print(f"involution bench: error: {error}", file=sys.stderr)
            return 2
    if args.backend == "fast-cuda":
        return _run_cuda(args)
    if args.dtype or args.plan:
        print("involution bench: --dtype and --plan are for --backend fast-cuda (the cpu benchmark times float32)",
              file=sys.stderr)
        return 2
    import numba

    from involution.benchmarks import networks, op_cpu
    from involution.fast import cpu

    if args.threads:
        numba.set_num_threads(args.threads)  # op_cpu and networks give torch the same count
    if args.networks:
        return _run_networks(args, networks)

    batches = args.batch or ([1] if args.quick else [1, 8])
    repeats = args.repeats or (2 if args.quick else 5)
    versions = cpu.VERSIONS if args.kernel_versions else ()
    layers = tuple(REDNET_LAYERS[index] for index in args.layers) if args.layers else REDNET_LAYERS
    print(op_cpu.format_rows([], versions))
    results = {"command": " ".join(["python -m involution", *sys.argv[1:]]),
               **op_cpu.run(batches, repeats, layers, versions, robustness_checks=not args.no_checks)}
    print(json.dumps(results["summary"], indent=1))
    if not (args.quick or args.no_networks):
        results["networks"] = networks.run(("rednet50",), batches, repeats, compiled=args.compile, training=False,
                                           profile=False)
    path = args.json or os.path.join("out", "bench_cpu.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    replaced = os.path.exists(path)  # an explicit --json was checked above; the default is the command's own file
    write_atomically(path, json.dumps(results, indent=1))
    print(f"{'replaced' if replaced else 'wrote'} {path}")
    return 0
