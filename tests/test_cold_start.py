"""Cold start of the fast CPU kernels: the first call that compiles says so once, a cached one is silent, the cache
has a place when the install and home folders are read-only, and ``involution warmup`` compiles what a RedNet
layer's first call needs."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from numba.core import caching, event  # noqa: E402

from involution.fast import cpu_forward, runtime  # noqa: E402


def compile_event(function, *args):
    """A ``"numba:compile"`` start event as numba's dispatcher broadcasts it."""
    dispatcher = type("Dispatcher", (), {"py_func": staticmethod(function)})()
    return event.Event("numba:compile", event.EventStatus.START, data=dict(dispatcher=dispatcher, args=args))


def test_the_notice_comes_once_per_dtype_and_only_for_this_packages_kernels():
    stream = io.StringIO()
    notice = runtime.CompileNotice(stream)
    float32, float64 = numba.types.float32[:, :, :, ::1], numba.types.float64[:, :, :, ::1]
    notice.on_start(compile_event(np.add, float32))  # not ours: silent
    for args in ((float32, float32), (float32,), (numba.types.int64,), (float64,)):
        notice.on_start(compile_event(cpu_forward.forward_v1.py_func, *args))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("involution: compiling the fast CPU kernels for float32, once per machine; ") \
        and "float64" in lines[1], lines


FIRST_CALL = """
import numpy as np
from involution.fast import cpu
x = np.ones((1, 2, 5, 5), np.float32)
kernel = np.ones((1, 1, 3, 3, 5, 5), np.float32)
print(float(cpu.involution2d(x, kernel, padding=1, version=1).sum()))
"""


@pytest.mark.slow
def test_a_compiling_call_says_so_once_and_a_cached_one_is_silent(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=600) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    # Ones in, 3x3 ones, padding 1: per 5x5 channel 9 interior outputs of 9 taps, 12 edge ones of 6, 4 corners of 4.
    assert runs[0].stdout == runs[1].stdout == f"{2 * (9 * 9 + 12 * 6 + 4 * 4):.1f}\n", [run.stdout for run in runs]
    notices = [line for line in runs[0].stderr.splitlines() if line.startswith("involution: compiling")]
    assert len(notices) == 1 and notices[0].startswith(  # NUMBA_CACHE_DIR under the current folder: shown relative
        f"involution: compiling the fast CPU kernels for float32, once per machine; cached in cache{os.sep}"), \
        runs[0].stderr
    assert "compiling" not in runs[1].stderr, runs[1].stderr


def test_the_cache_falls_back_to_the_temporary_folder_when_others_are_read_only(monkeypatch):
    writable = caching.UserWideCacheLocator.ensure_cache_path

    def read_only_but_temporary(self):  # as root every folder is writable: numba's test is made to fail here
        if not isinstance(self, runtime.TemporaryFolderLocator):
            raise OSError("read-only file system")
        writable(self)

    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    for locator in (caching.InTreeCacheLocator, caching.UserWideCacheLocator):
        monkeypatch.setattr(locator, "ensure_cache_path", read_only_but_temporary)
    folder = runtime.cache_folder()
    assert folder is not None and folder.startswith(os.path.join(tempfile.gettempdir(), "involution-numba-")), folder
    assert runtime.TemporaryFolderLocator.from_function(np.add, np.__file__) is None  # other packages: numba's rules


@pytest.mark.slow
def test_warmup_compiles_what_a_rednet_layers_first_call_needs(tmp_path):
    """After ``involution warmup --rednet-only`` in one process, another's first forward (contiguous and
    channels-last) and backward on RedNet-50's 64@56 7x7 layer at batch 2 compiles nothing (numba broadcasts no compile event for a kernel loaded from the
    cache). The machine's own cache (make's install step fills it): warmup compiles only what it lacks."""
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    warmup = subprocess.run([sys.executable, "-m", "involution", "warmup", "--rednet-only"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=900)
    assert warmup.returncode == 0 and "float32: the fast CPU kernels ready" in warmup.stdout, warmup.stderr
    first_call = """
from numba.core import event
compiled = []
class Record(event.Listener):
    def on_start(self, e):
        function = e.data["dispatcher"].py_func
        if function.__module__.startswith("involution."):  # numba's own helpers compile per process
            compiled.append(function.__qualname__)
    def on_end(self, e):
        pass
from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry, random_inputs
import numpy as np
from involution.fast import cpu, cpu_forward_channels_last
geometry = layer_geometry(REDNET_LAYERS[1], 2)
x, kernel, grad_out = random_inputs(geometry, "float32")
event.register("numba:compile", Record())
cpu.involution2d(x, kernel, padding=3)
x_last, kernel_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(kernel.transpose(0, 4, 5, 1, 2, 3))
cpu_forward_channels_last.run((x_last, kernel_last, np.empty(cpu_forward_channels_last.shapes(geometry)[2], x.dtype)),
                              geometry)
cpu.involution2d_backward(grad_out, x, kernel, padding=3)
print(compiled)
"""
    result = subprocess.run([sys.executable, "-c", first_call], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


V4_WIDTHS = """
import numpy as np
from involution.fast import cpu, cpu_forward
from involution.reference import involution2d
for kernel_w in (1, 2, 5):
    x = np.random.default_rng(kernel_w).standard_normal((1, 4, 6, 9))
    kernel = np.random.default_rng(0).standard_normal((1, 2, 3, kernel_w, 6, 10 - kernel_w))
    out = cpu.involution2d(x, kernel, padding=(1, 0), version=4)
    np.testing.assert_allclose(out, involution2d(x, kernel, padding=(1, 0)), rtol=1e-12, atol=1e-12)
print(len(cpu_forward.forward_rows_v4.signatures), cpu_forward.bands_v4.cache_info().currsize)
"""


@pytest.mark.slow
def test_forward_v4_compiles_its_parallel_kernel_once_for_all_kernel_widths(tmp_path):
    """The kernel width is a compile-time constant of v4's tap rows: each width compiles a small callback
    (``cpu_forward.bands_v4``), not the parallel kernel again (4.5 s a width; the conformance suite draws 1-7)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", V4_WIDTHS], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "3"], f"(parallel kernel signatures, callbacks): {result.stdout}"


def cached_kernels(folder) -> set[str]:
    """The compiled kernels (numba's ``*.nbc`` files) in cache folder ``folder``."""
    return {os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder)
            for name in names if name.endswith(".nbc")}


DEMO_CONFORMANCE = """
from involution.cli import main
from involution.commands import demo
demo.quiet_floating_point_warnings()
demo.derandomize_hypothesis()
raise SystemExit(main(["conformance", "--max-examples", "5",
                       *[arg for name in demo.judged_backends("numpy") for arg in ("--backend", name)]]))
"""


@pytest.mark.slow
def test_after_warmup_the_demos_conformance_run_compiles_nothing(request, tmp_path):
    """``involution warmup`` for both dtypes (as the demo runs it), then the demo's NumPy conformance section
    (derandomized): numba's cache gains no kernel, so no call of the suite's compiled (forward v4's kernel widths and
    the float32 8-lane kernels did: 83 s of a cold demo). Minutes of compiling: run with ``pytest -m slow`` (or
    ``INVOLUTION_SLOW_TESTS=1``)."""
    if "slow" not in (request.config.option.markexpr or "") and os.environ.get("INVOLUTION_SLOW_TESTS") != "1":
        pytest.skip("an empty cache's whole warmup: run with -m slow or INVOLUTION_SLOW_TESTS=1")
    cache = tmp_path / "cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    warmup = subprocess.run([sys.executable, "-m", "involution", "warmup", "--dtype", "float32", "--dtype", "float64"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert warmup.returncode == 0, warmup.stderr
    warmed = cached_kernels(cache)
    suite = subprocess.run([sys.executable, "-c", DEMO_CONFORMANCE], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=1200)
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-3000:]
    assert cached_kernels(cache) == warmed, f"compiled by the suite: {sorted(cached_kernels(cache) - warmed)}"
