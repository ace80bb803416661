"""The main job: the op with a gradient check, the RedNet complexity table against the published one, the
conformance matrices of every available NumPy and torch backend and a short op benchmark."""
from __future__ import annotations

import os
import time

import numpy as np

from involution.arguments import positive_int, seed
from involution.reference import involution2d, involution2d_backward, output_size
from involution.reference.gradcheck import involution_gradients_fd

SECTIONS = ("complexity", "conformance", "bench")
OUT = "out"  # the demo's benchmark JSON goes here, as `python -m involution bench`'s does


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--max-examples", type=positive_int, default=5,
                        help="hypothesis examples per conformance property and backend (default 5)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS,
                        help="leave out a section (repeatable)")


def op_tour(seed: int) -> None:
    """Run the op on a small odd-sized input with stride and dilation and check both gradients."""
    rng = np.random.default_rng(seed)
    batch, channels, groups, height, width = 2, 8, 2, 9, 7
    kh, kw, stride, padding, dilation = 3, 3, (2, 1), 1, (1, 2)
    out_h = output_size(height, kh, stride[0], padding, dilation[0])
    out_w = output_size(width, kw, stride[1], padding, dilation[1])
    x = rng.standard_normal((batch, channels, height, width))
    kernel = rng.standard_normal((batch, groups, kh, kw, out_h, out_w))
    print("== involution2d (NumPy reference) ==")
    print(f"x {x.shape}, kernel {kernel.shape} (B, G, Kh, Kw, Ho, Wo), stride {stride}, padding {padding}, "
          f"dilation {dilation}")
    started = time.perf_counter()
    out = involution2d(x, kernel, stride, padding, dilation)
    print(f"out {out.shape} in {1e3 * (time.perf_counter() - started):.2f} ms; channel c uses group c // (C // G)")

    grad_out = rng.standard_normal(out.shape)
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    fd_x, fd_kernel = involution_gradients_fd(involution2d, grad_out, x, kernel, stride, padding, dilation)
    for name, analytic, numeric in (("grad_x", grad_x, fd_x), ("grad_kernel", grad_kernel, fd_kernel)):
        error = np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(numeric)), 1e-300)
        print(f"{name:12s} analytic vs central differences (float64): max relative error {error:.1e}")


def run(args) -> int:
    from involution.cli import main

    op_tour(args.seed)
    commands = {
        "complexity": ["complexity", "--convention", "published", "--compare", "resnet"],
        "conformance": ["conformance", "--max-examples", str(args.max_examples)],
        "conformance-torch": ["conformance", "--framework", "torch", "--max-examples", str(args.max_examples)],
        "bench": ["bench", "--quick", "--json", os.path.join(OUT, "bench_cpu_quick.json"), "--force"],  # its own file
    }
    status = 0
    for name, command in commands.items():
        if name.partition("-")[0] in args.skip:
            continue
        if name == "bench":
            os.makedirs(OUT, exist_ok=True)  # a fresh clone has no out/ (git ignores it); bench checks --json's folder
        print(f"\n== python -m involution {' '.join(command)} ==", flush=True)
        status = max(status, main(command))
    return status
