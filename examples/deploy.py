"""Deploy RedNet-26 (the default model, the fast op) without ONNX: torch.export save/load, TorchScript trace and an
AOTInductor package, each timed and checked against eager at two input sizes; then the static-shape AOTInductor
package fed another shape (no error, wrong values: torch's behaviour).

    python examples/deploy.py --size 64 [--skip-aoti]

Prints one line per step: seconds, and the largest difference from eager (float32) at each input size.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from involution.torch import Involution2d, RedNet


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def differences(run, model, inputs) -> str:
    with torch.no_grad():
        return ", ".join(f"{tuple(x.shape)}: max |diff| {float((run(x) - model(x)).abs().max()):.2e}" for x in inputs)


def loads_in_a_fresh_process(code: str) -> str:
    """Run ``code`` in a new interpreter; 'ok' or the last line of its error."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return "ok" if done.returncode == 0 else done.stderr.strip().splitlines()[-1][:160]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="first input's height and width (default 64)")
    parser.add_argument("--skip-aoti", action="store_true", help="skip the AOTInductor steps (minutes of C++ compile)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="involution-deploy-"))
    model = RedNet(26).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 3, args.size, args.size, generator=generator),  # batch 2: torch.export specialises 1
              torch.randn(3, 3, args.size + 32, args.size + 16, generator=generator))
    print(f"RedNet-26, backend {model.backbone.stem[1].backend}; load average {os.getloadavg()[0]:.1f}")

    dims = ({0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},)
    program, seconds = timed(torch.export.export, model, inputs[:1], dynamic_shapes=dims)
    path = folder / "rednet26.pt2"
    torch.export.save(program, path)
    loaded, load_seconds = timed(torch.export.load, path)
    print(f"torch.export: export {seconds:.1f} s, load {load_seconds:.1f} s; "
          f"{differences(loaded.module(), model, inputs)}")
    load = f"import torch; torch.export.load({str(path)!r})"
    print(f"  torch.export.load in a fresh process: without the import {loads_in_a_fresh_process(load)}; "
          f"with `import involution.torch.ops`: {loads_in_a_fresh_process('import involution.torch.ops; ' + load)}")

    with torch.no_grad():
        traced, seconds = timed(torch.jit.trace, model, inputs[:1])
    path = folder / "rednet26.ts"
    traced.save(str(path))
    loaded, load_seconds = timed(torch.jit.load, str(path))
    print(f"torch.jit.trace: trace {seconds:.1f} s, load {load_seconds:.1f} s; {differences(loaded, model, inputs)}")
    load = f"import torch; torch.jit.load({str(path)!r})"
    print(f"  torch.jit.load in a fresh process: without the import {loads_in_a_fresh_process(load)}; "
          f"with `import involution.torch.ops`: {loads_in_a_fresh_process('import involution.torch.ops; ' + load)}")
    if args.skip_aoti:
        return 0

    package, seconds = timed(torch._inductor.aoti_compile_and_package, program,
                             package_path=str(folder / "rednet26_aoti.pt2"))
    runner, load_seconds = timed(torch._inductor.aoti_load_package, package)
    print(f"AOTInductor (dynamic batch, height, width): compile {seconds:.1f} s, load {load_seconds:.1f} s; "
          f"{differences(runner, model, inputs)}")

    layer = Involution2d(64, 7).eval()
    small, other = torch.randn(1, 64, 16, 16), torch.randn(1, 64, 24, 24)
    static = torch.export.export(layer, (small,))
    runner = torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(
        static, package_path=str(folder / "layer_static.pt2")))
    with torch.no_grad():
        same = float((runner(small) - layer(small)).abs().max())
        try:
            result = runner(other)
            outcome = (f"no error, output shape {tuple(result.shape)}, max |diff| from eager "
                       f"{float((result - layer(other)).abs().max()) if result.shape == layer(other).shape else 'n/a'}")
        except Exception as error:  # noqa: BLE001 (reporting what torch does)
            outcome = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    print(f"AOTInductor static-shape Involution2d(64, 7) compiled at 16x16: at 16x16 max |diff| {same:.2e}; "
          f"fed 24x24: {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
