"""The main job: the op with a gradient check, the RedNet complexity table against the published one, the
conformance matrices of the project's NumPy and torch backends and a short op benchmark.

Deterministic: a fixed seed for the op, hypothesis derandomized (no example database) for the suite. fast-cuda is
left out unless INVOLUTION_REAL_GPU=1 asks for a real GPU: without one its kernels run under numba's simulator, a
Python emulation for checking their indexing on tiny shapes (make test does that), not a backend to judge on the
suite's wide geometries. The fast CPU kernels are compiled first where numba's cache lacks them (involution warmup:
once per machine, minutes), so that no call of the suite's is timed while it compiles. The benchmark is the quick
one on two of RedNet-50's eight layers without the robustness checks (make bench runs them all): it took 14 of the
demo's 23 minutes on all eight at load 11-19.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

from involution.arguments import positive_int, seed
from involution.reference import involution2d, involution2d_backward, output_size
from involution.reference.gradcheck import involution_gradients_fd

SECTIONS = ("complexity", "conformance", "bench")
DEMO_LAYERS = ("1", "7")  # RedNet-50's 64@56 and 512@7 7x7 involutions: its largest and smallest
OUT = "out"  # the demo's benchmark JSON goes here, as `python -m involution bench`'s does


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--max-examples", type=positive_int, default=5,
                        help="hypothesis examples per conformance property and backend (default 5)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS,
                        help="leave out a section (repeatable)")


def judged_backends(framework: str) -> list[str]:
    """The project's backends of ``framework`` the demo judges: not the suite's oracle (which judges itself in make
    test), fast-cuda only on a real GPU (INVOLUTION_REAL_GPU=1)."""
    from involution.conformance.backends import PROJECT_BACKENDS

    real_gpu = os.environ.get("INVOLUTION_REAL_GPU") == "1"
    return [name for name in PROJECT_BACKENDS[framework] if name != "oracle" and (real_gpu or name != "fast-cuda")]


def derandomize_hypothesis() -> None:
    """Load a hypothesis profile that draws the same examples on every run and keeps no example database."""
    from hypothesis import settings

    settings.register_profile("involution-demo", settings(), derandomize=True, database=None, deadline=None)
    settings.load_profile("involution-demo")


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


# NumPy's floating-point warnings, which the suite's deliberate inf/NaN inputs raise in the implementations under
# test (the suite judges their values, not their warnings): kept out of the demo's output, its worker processes'
# included (the demo is a program of its own, so it may set its environment).
QUIET = ("invalid value encountered", "overflow encountered", "divide by zero encountered")


def quiet_floating_point_warnings() -> None:
    """Ignore :data:`QUIET` RuntimeWarnings here and in the worker processes the suite starts."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
    ours = ",".join(f"ignore:{message}:RuntimeWarning" for message in QUIET)
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), ours)))


def run(args) -> int:
    from involution.cli import main

    op_tour(args.seed)
    quiet_floating_point_warnings()
    derandomize_hypothesis()
    backends = {framework: [arg for name in judged_backends(framework) for arg in ("--backend", name)]
                for framework in ("numpy", "torch")}
    if "fast-cuda" not in backends["numpy"] and "conformance" not in args.skip:
        print("\nfast-cuda left out: no GPU asked for (INVOLUTION_REAL_GPU=1 judges it on a real GPU; make test checks "
              "its kernels under numba's simulator on tiny shapes)")
    commands = {
        "complexity": ["complexity", "--convention", "published", "--compare", "resnet"],
        "warmup": ["warmup", "--dtype", "float32", "--dtype", "float64"],
        "conformance": ["conformance", "--max-examples", str(args.max_examples), *backends["numpy"]],
        "conformance-torch": ["conformance", "--framework", "torch", "--max-examples", str(args.max_examples),
                              *backends["torch"]],
        "bench": ["bench", "--quick", "--no-checks", "--layers", *DEMO_LAYERS, "--json",
                  os.path.join(OUT, "bench_cpu_quick.json"), "--force"],  # its own file
    }
    status = 0
    for name, command in commands.items():
        if name.partition("-")[0] in args.skip or (name == "warmup" and {"conformance", "bench"} <= set(args.skip)):
            continue
        if name == "bench":
            os.makedirs(OUT, exist_ok=True)  # a fresh clone has no out/ (git ignores it); bench checks --json's folder
        print(f"\n== python -m involution {' '.join(command)} ==", flush=True)
        started = time.perf_counter()
        status = max(status, main(command))
        print(f"({time.perf_counter() - started:.0f} s)")
    return status
