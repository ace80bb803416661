"""The kernels with the largest loop bodies (forward v8, grad_kernel v9) hand each work unit to one ``jit_unit``
function: numba's parfor passes then copy a loop body of one call instead of every inlined helper, which cut their
first call's compile time by 30-45% (docs/performance.md, "Cold start"). Results are the tests/test_fast_cpu*.py
suites' business; these tests pin the structure that keeps the compile short."""
from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")
from involution.fast import cpu_forward, cpu_grad_kernel  # noqa: E402

# kernel -> the unit its prange loop calls
UNITS = {cpu_forward.forward_channels_v8: cpu_forward.forward_unit_v8,
         cpu_grad_kernel.grad_kernel_positions_v9: cpu_grad_kernel.grad_kernel_unit_v9}


def prange_loops(function):
    """The ``for ... in prange(...)`` loops of a jitted function's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function.py_func)))
    return [node for node in ast.walk(tree) if isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
            and getattr(node.iter.func, "id", None) == "prange"]


@pytest.mark.parametrize("kernel", list(UNITS), ids=lambda kernel: kernel.py_func.__name__)
def test_the_loop_body_is_one_call_of_a_serial_unit(kernel):
    loops = prange_loops(kernel)
    assert len(loops) == 1, f"{kernel.py_func.__name__}: {len(loops)} prange loops"
    body = loops[0].body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call), \
        f"{kernel.py_func.__name__}'s prange body has {len(body)} statements: {ast.unparse(loops[0])[:300]}"
    called = body[0].value.func.id
    unit = UNITS[kernel]
    assert called == unit.py_func.__name__, f"the loop calls {called}, not {unit.py_func.__name__}"
    options = unit.targetoptions
    assert not options.get("parallel") and options.get("inline", "never") == "never", \
        f"{called} is compiled with {options}: a unit is serial and not inlined by numba (jit_unit)"
    index = body[0].value.args[5]  # the unit index, cast to int64: the parfor's own index is unsigned
    assert ast.unparse(index) == f"numba.int64({loops[0].target.id})", ast.unparse(index)


FIRST_CALLS = """
import numpy as np
from involution.fast import cpu, cpu_forward, cpu_grad_kernel
from involution.spec import check_geometry
geometry = check_geometry((1, 16, 9, 9), (1, 1, 3, 3, 9, 9), 1, 1, 1)
x, kernel, grad_out = (np.ones(shape, np.float32)
                       for shape in (geometry.x_shape, geometry.kernel_shape, geometry.out_shape))
cpu.run("forward", (x, kernel, np.empty(geometry.out_shape, np.float32)), geometry, 8)
cpu.run("grad_kernel", (grad_out, x, np.empty(geometry.kernel_shape, np.float32)), geometry, 9)
for kernel, unit in ((cpu_forward.forward_channels_v8, cpu_forward.forward_unit_v8),
                     (cpu_grad_kernel.grad_kernel_positions_v9, cpu_grad_kernel.grad_kernel_unit_v9)):
    print(unit.py_func.__name__, len(kernel.signatures), len(unit.signatures))
"""


@pytest.mark.slow
def test_each_unit_compiles_once_per_kernel_signature(tmp_path):
    """A unit called with the parfor's unsigned index as well as with a signed one would compile its body twice. In
    a new process with an empty cache (a kernel loaded from the cache compiles no unit)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    counts = {name: (int(kernels), int(units)) for name, kernels, units in
              (line.split() for line in result.stdout.splitlines())}
    assert counts == {"forward_unit_v8": (1, 1), "grad_kernel_unit_v9": (1, 1)}, \
        f"(kernel signatures, unit signatures): {counts}"
