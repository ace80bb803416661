"""The numba CPU backend: every numbered kernel and the dispatcher against the NumPy reference, the version
policy, scratch bounds, huge hyper-parameters, NaN/inf, threads, fork, an unwritable cache, determinism.

The fresh-compile bounds-checked run of every kernel takes minutes and is skipped by default; run it with
``python -m pytest tests/test_fast_cpu.py -m slow`` (or ``INVOLUTION_SLOW_TESTS=1``).
"""
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

from involution.fast import cpu, cpu_forward, runtime  # noqa: E402
from involution.reference import involution2d, involution2d_backward  # noqa: E402

from involution.reference.loops import involution2d_loops  # noqa: E402

from cases import (assert_backward_matches, assert_forward_matches, assert_matches_reference_on,  # noqa: E402
                   assert_same_nonfinite, CASES, LARGE_CASES, backward_loops, case_id, geometry_of, good_args, make_case,
                   make_nonfinite_case)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IDS = [case_id(case) for case in CASES]
WIDE_CASE = (1, 2, 1, 3, 300, 1, 101, (1, 1), (0, 0), (1, 1))  # Kw = 101 > v4's MAX_ROW_TAPS
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("version", cpu.VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_version_matches_reference(case, dtype, version):
    assert_matches_reference_on(case, dtype, functools.partial(cpu.involution2d, version=version),
                                functools.partial(cpu.involution2d_backward, version=version), f"version {version}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_dispatcher_takes_non_contiguous_inputs(dtype):
    x, kernel, grad_out, stride, padding, dilation = make_case(CASES[8], dtype)
    x_strided = np.asfortranarray(x)                       # same values, column-major
    kernel_strided = np.repeat(kernel, 2, axis=-1)[..., ::2]  # same values, every other element of a copy
    grad_out_strided = np.swapaxes(np.swapaxes(grad_out, 2, 3).copy(), 2, 3)
    for array in (x_strided, kernel_strided, grad_out_strided):
        assert not array.flags.c_contiguous
    context = f"non-contiguous {np.dtype(dtype)}, case {CASES[8]}"
    out = cpu.involution2d(x_strided, kernel_strided, stride, padding, dilation)
    assert_forward_matches(out, x, kernel, stride, padding, dilation, context)
    grads = cpu.involution2d_backward(grad_out_strided, x_strided, kernel_strided, stride, padding, dilation)
    assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, context)


def test_bitwise_identical_across_runs_and_thread_counts(monkeypatch):
    numba = pytest.importorskip("numba")
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)  # run on the threads asked for, busy machine or not
    x, kernel, grad_out, stride, padding, dilation = make_case(CASES[8], np.float32, seed=3)
    threads = numba.get_num_threads()
    first = (cpu.involution2d(x, kernel, stride, padding, dilation),
             *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
    try:
        numba.set_num_threads(1)
        single = (cpu.involution2d(x, kernel, stride, padding, dilation),
                  *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
        assert numba.get_num_threads() == 1, "the backend changed numba's thread count"
    finally:
        numba.set_num_threads(threads)
    again = (cpu.involution2d(x, kernel, stride, padding, dilation),
             *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
    for name, a, b, c in zip(("out", "grad_x", "grad_kernel"), first, single, again):
        assert np.array_equal(a, c), f"{name} differs between two runs with {threads} threads"
        assert np.array_equal(a, b), f"{name} differs between {threads} threads and 1 thread"


def test_thread_count_from_numba_environment():
    script = textwrap.dedent("""
        import numba, numpy as np
        from involution.fast import cpu
        x = np.ones((1, 2, 5, 5)); kernel = np.ones((1, 1, 3, 3, 5, 5))
        assert cpu.involution2d(x, kernel, 1, 1, 1)[0, 0, 2, 2] == 9.0
        print(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads())
    """)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"], f"NUMBA_NUM_THREADS=1 gave {result.stdout!r}"


BOUNDSCHECK_SCRIPT = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    from involution.fast import cpu
    from involution.reference.loops import involution2d_loops
    from involution.spec import check_geometry
    sys.path.insert(0, "tests")
    from cases import backward_loops, make_case

    @numba.njit
    def read_past_end(array):
        return array[array.size]

    try:  # proves the bounds checks are compiled in: without them this reads past the end silently
        read_past_end(np.zeros(3))
        sys.exit("NUMBA_BOUNDSCHECK is not active")
    except IndexError:
        pass
    assert numba.get_num_threads() == 1, "an IndexError on a second thread would be dropped"
    cases = {cases!r}
    for case in cases:
        x, kernel, grad_out, stride, padding, dilation = make_case(case)
        geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
        expected = (involution2d_loops(x, kernel, stride, padding, dilation),
                    *backward_loops(grad_out, x, kernel, stride, padding, dilation))
        for version in cpu.VERSIONS:
            if not all(cpu.scratch_fits(name, version, geometry) for name in cpu.KINDS) and version >= 3:
                continue  # the large geometries: v3 and v4 refuse them (test_large_hyper_parameters)
            got = (cpu.involution2d(x, kernel, stride, padding, dilation, version=version),
                   *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version))
            for name, a, b in zip(("out", "grad_x", "grad_kernel"), got, expected):
                if not np.allclose(a, b, rtol=1e-10, atol=1e-10):
                    sys.exit(f"version {{version}} {{name}} differs from the reference, case {{case}}")
    print("ok", len(cases))
""")


@pytest.mark.slow
def test_kernels_never_read_out_of_bounds(request, tmp_path):
    """All versions, compiled fresh with numba's bounds checks on one thread (an IndexError raised on a worker
    thread is dropped), over odd/strided/dilated/padded shapes and the large hyper-parameters. Minutes of
    compiling: run with ``pytest -m slow tests/test_fast_cpu.py`` (or ``INVOLUTION_SLOW_TESTS=1``)."""
    if "slow" not in (request.config.option.markexpr or "") and os.environ.get("INVOLUTION_SLOW_TESTS") != "1":
        pytest.skip("fresh bounds-checked compile of every kernel: run with -m slow or INVOLUTION_SLOW_TESTS=1")
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_NUM_THREADS": "1",
           "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache_boundscheck")}
    done = subprocess.run([sys.executable, "-c", BOUNDSCHECK_SCRIPT.format(cases=CASES + LARGE_CASES)], env=env,
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, f"stdout {done.stdout!r}\nstderr {done.stderr[-3000:]}"
    # an IndexError in a numba.cfunc (forward v4's callbacks, cpu_forward.bands_v4) cannot propagate: numba prints it
    # as "Exception ignored in ..." and the call goes on
    assert "Exception ignored" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", str(len(CASES + LARGE_CASES))], done.stdout


def bad_inputs():
    """(description, kwargs of a call) that the reference rejects."""
    x, kernel, stride, padding, dilation = good_args()
    good = dict(x=x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    return [
        ("x 3-D", {**good, "x": x[0]}),
        ("G not dividing C", {**good, "kernel": np.zeros((2, 3, 3, 3, 6, 6))}),
        ("kernel spatial != output", {**good, "kernel": np.zeros((2, 2, 3, 3, 5, 6))}),
        ("stride 0", {**good, "stride": 0}),
        ("dilation negative", {**good, "dilation": (1, -1)}),
        ("padding float", {**good, "padding": 1.5}),
        ("output < 1", {**good, "x": np.zeros((2, 4, 1, 1)), "padding": 0}),
        ("int x", {**good, "x": x.astype(np.int64)}),
        ("mixed dtypes", {**good, "x": x.astype(np.float32)}),
        ("big-endian x", {**good, "x": x.astype(">f8")}),
        ("batch mismatch", {**good, "kernel": kernel[:1]}),
        ("x a list", {**good, "x": "abc"}),
    ]


@pytest.mark.parametrize("description, kwargs", bad_inputs(), ids=[d for d, _ in bad_inputs()])
def test_bad_input_raises_the_reference_error(description, kwargs):
    with pytest.raises((TypeError, ValueError)) as expected:
        involution2d(**kwargs)
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        cpu.involution2d(**kwargs)
    grad_out = np.zeros((2, 4, 6, 6))
    with pytest.raises((TypeError, ValueError)) as expected_backward:
        involution2d_backward(grad_out, **kwargs)
    with pytest.raises(expected_backward.type, match=re.escape(str(expected_backward.value))):
        cpu.involution2d_backward(grad_out, **kwargs)


def test_bad_grad_out_and_version_raise():
    x, kernel, grad_out, stride, padding, dilation = make_case(CASES[0], np.float64)
    with pytest.raises(ValueError, match=re.escape("grad_out must have the output shape")):
        cpu.involution2d_backward(grad_out[:, :, 1:], x, kernel, stride, padding, dilation)
    with pytest.raises(TypeError, match=re.escape("grad_out must have the dtype of x (float64), got float32")):
        cpu.involution2d_backward(grad_out.astype(np.float32), x, kernel, stride, padding, dilation)
    with pytest.raises(ValueError, match=re.escape(f"version must be one of {cpu.VERSIONS} or None, got 0")):
        cpu.involution2d(x, kernel, stride, padding, dilation, version=0)


# ------------------------------------------------------------------------------------- version policy
POLICY = [  # (what, case, {kind: version})
    ("RedNet stage 1, 56x56 K7: channel vectors, positions in lanes", (1, 64, 4, 56, 56, 7, 7, (1, 1), (3, 3), (1, 1)),
     {"forward": 8, "grad_x": 8, "grad_kernel": 9}),
    ("RedNet stage 4, 7x7 K7: channel vectors, positions in lanes", (1, 512, 32, 7, 7, 7, 7, (1, 1), (3, 3), (1, 1)),
     {"forward": 8, "grad_x": 8, "grad_kernel": 9}),
    ("rows of 5 outputs: grad_kernel below v9's narrowest measured row",
     (1, 16, 1, 20, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
     {"forward": 8, "grad_x": 8, "grad_kernel": 7}),
    ("3x3 at batch 1: positions in lanes", (1, 32, 2, 28, 28, 3, 3, (1, 1), (1, 1), (1, 1)),
     {"forward": 8, "grad_x": 8, "grad_kernel": 9}),
    ("3x3 at batch 2: v7 (v9 measured no faster at batch 8)", (2, 32, 2, 28, 28, 3, 3, (1, 1), (1, 1), (1, 1)),
     {"forward": 8, "grad_x": 8, "grad_kernel": 7}),
    ("4 channels per group: too few for a vector", (1, 16, 4, 20, 20, 7, 7, (1, 1), (3, 3), (1, 1)),
     {"forward": 4, "grad_x": 3, "grad_kernel": 3}),
    ("rows of 3 outputs: grad_kernel below v7's block", (1, 16, 1, 20, 3, 3, 3, (1, 1), (1, 1), (1, 1)),
     {"forward": 8, "grad_x": 8, "grad_kernel": 3}),
    ("stride 3000", LARGE_CASES[0], {"forward": 2, "grad_x": 2, "grad_kernel": 2}),
    ("dilation 100000, 1x1 output", LARGE_CASES[1], {"forward": 2, "grad_x": 2, "grad_kernel": 2}),
    ("Kw = 101", WIDE_CASE, {"forward": 3, "grad_x": 3, "grad_kernel": 3}),
]


@pytest.mark.parametrize("what, case, expected", POLICY, ids=[p[0] for p in POLICY])
def test_version_policy(what, case, expected):
    geometry = geometry_of(case)
    assert cpu.versions_for(geometry) == expected, f"{what}: {cpu.versions_for(geometry)}"
    for kind, version in expected.items():
        assert cpu.choose_version(kind, geometry) == version and cpu.check_version(kind, None, geometry) == version


@pytest.mark.parametrize("version", [6, 7, 8, 9])
def test_channel_vector_versions_refuse_geometries_whose_copy_would_dwarf_the_work(version):
    geometry = geometry_of(LARGE_CASES[1])  # dilation 100000: the channels-last band would hold the skipped input
    with pytest.raises(ValueError, match=f"version {version} of forward \\(channel vectors\\) would copy far more"):
        cpu.check_version("forward", version, geometry)
    assert cpu.check_version("forward", version, geometry_of(CASES[0])) == version  # few channels: slow, not unsafe


@pytest.mark.parametrize("case", CASES + LARGE_CASES + [WIDE_CASE], ids=case_id)
def test_chosen_versions_scratch_is_bounded_by_the_arrays(case):
    """The chosen kernels' scratch (from the kernels' own layout functions) is within a constant times the
    elements of x, kernel and output: never growing with stride**2 or the dilation."""
    geometry = geometry_of(case)
    arrays = sum(int(np.prod(shape)) for shape in (geometry.x_shape, geometry.kernel_shape, geometry.out_shape))
    threads = 16  # a big machine's worth of scratch sets
    for kind, version in cpu.versions_for(geometry).items():
        scratch = cpu.scratch_elements(kind, version, geometry, workers=threads)
        assert scratch <= cpu.SCRATCH_RATIO * arrays + cpu.SCRATCH_SLACK * threads, (
            f"{kind} v{version}: {scratch} scratch elements for {arrays} array elements, case {case}")


def test_v3_scratch_would_grow_with_stride_squared():
    """What the policy avoids: v3/v4 on stride 3000 need ~sh*sw scratch (741 MB of float32 before)."""
    geometry = geometry_of(LARGE_CASES[0])
    for kind, version in (("forward", 3), ("forward", 4), ("grad_kernel", 3)):
        assert cpu.scratch_elements(kind, version, geometry, workers=1) > 3000**2, kind
        with pytest.raises(ValueError, match=f"version {version} of {kind} would need"):
            cpu.check_version(kind, version, geometry)


@pytest.mark.parametrize("case", LARGE_CASES, ids=case_id)
def test_large_hyper_parameters_match_the_definition(case):
    x, kernel, grad_out, stride, padding, dilation = make_case(case)
    context = f"case {case}, versions {cpu.versions_for(geometry_of(case))}"
    out = cpu.involution2d(x, kernel, stride, padding, dilation)
    np.testing.assert_allclose(out, involution2d_loops(x, kernel, stride, padding, dilation), rtol=1e-12,
                               atol=1e-12, err_msg=context)
    assert np.abs(out).max() > 0, f"{context}: all-zero output, the case reads no input"
    for name, got, expected in zip(("grad_x", "grad_kernel"),
                                   cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation),
                                   backward_loops(grad_out, x, kernel, stride, padding, dilation)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, err_msg=f"{name}, {context}")


def test_large_stride_peak_memory_stays_small():
    """Peak resident memory while running the stride-3000 case (ru_maxrss; numba's allocations are invisible
    to tracemalloc) rises by less than 50 MB: v3's phases alone were 741 MB there."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, "tests")
        from cases import make_case
        from involution.fast import cpu
        x, kernel, grad_out, *hyper = make_case({LARGE_CASES[0]!r}, "float32")
        for measured in (False, True):  # the first round compiles (or loads the cache)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            cpu.involution2d(x, kernel, *hyper)
            cpu.involution2d_backward(grad_out, x, kernel, *hyper)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) < 50 * 2**20, f"peak grew by {done.stdout.split()[-1]} bytes"


def test_wide_kernel_rows_run_in_the_default_forward():
    """Kw = 101 runs (v3); v4 unrolls rows up to its limit and refuses wider ones by name."""
    x, kernel, grad_out, stride, padding, dilation = make_case(WIDE_CASE, np.float32)
    out = cpu.involution2d(x, kernel, stride, padding, dilation)
    assert_forward_matches(out, x, kernel, stride, padding, dilation, f"Kw=101, case {WIDE_CASE}")
    with pytest.raises(ValueError, match="version 4 unrolls kernel rows of up to"):
        cpu.involution2d(x, kernel, stride, padding, dilation, version=4)
    widest = (1, 3, 1, 4, 40, 2, cpu_forward.MAX_ROW_TAPS, (1, 1), (0, 1), (1, 1))
    x, kernel, _, stride, padding, dilation = make_case(widest, np.float32)
    assert cpu.choose_version("forward", geometry_of(widest)) == 4
    out = cpu.involution2d(x, kernel, stride, padding, dilation, version=4)
    assert_forward_matches(out, x, kernel, stride, padding, dilation, f"v4 at Kw=MAX_ROW_TAPS, case {widest}")


# --------------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("version", cpu.VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_every_version_gives_the_definitions_nan_and_inf(dtype, version):
    """inf * (zero padding) is NaN and NaN/inf in x or grad_out propagate, as in the reference (the definition)."""
    x, kernel, grad_out, stride, padding, dilation = make_nonfinite_case(dtype)
    with np.errstate(invalid="ignore"):
        expected = (involution2d(x, kernel, stride, padding, dilation),
                    *involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
    got = (cpu.involution2d(x, kernel, stride, padding, dilation, version=version),
           *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version))
    for name, a, b in zip(("out", "grad_x", "grad_kernel"), got, expected):
        assert_same_nonfinite(a, b, f"{name}, version {version}, {np.dtype(dtype)}")


# ------------------------------------------------------------------------------ threads, fork, cache
THREADS_AND_FORK_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, threading
    import numba, numpy as np
    from involution.fast import cpu

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    kernel = rng.standard_normal((2, 2, 3, 3, 12, 12)).astype(np.float32)
    grad_out = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    expected = cpu.involution2d(x, kernel, 1, 1, 1)  # the parent uses the op (and numba's threads) first
    expected_grads = cpu.involution2d_backward(grad_out, x, kernel, 1, 1, 1)

    def scaled(scale):  # powers of two: exactly scale * expected
        return cpu.involution2d(x * np.float32(scale), kernel, 1, 1, 1)

    report = {"layer": numba.threading_layer(), "threads_ok": True}
    failures = []

    def hammer(scale):
        for _ in range(20):
            if not np.array_equal(scaled(scale), expected * np.float32(scale)):
                failures.append(scale)
            if not all(np.array_equal(a, b) for a, b in
                       zip(cpu.involution2d_backward(grad_out, x, kernel, 1, 1, 1), expected_grads)):
                failures.append(-scale)

    workers = [threading.Thread(target=hammer, args=(2.0**k,)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    report["thread_failures"] = failures
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(scaled, [1.0, 2.0, 4.0, 8.0])
    report["fork_ok"] = [bool(np.array_equal(r, expected * np.float32(s))) for r, s in zip(results, [1, 2, 4, 8])]
    print(json.dumps(report))
""")


@pytest.mark.parametrize("layer", [None, "workqueue"], ids=["default", "workqueue"])
def test_threads_and_fork_after_use(layer):
    """4 Python threads call the op at once, then a fork Pool(2) computes in children of a process that ran
    it: all results exact, nothing aborts or hangs (a hang is a timeout here). With the default settings
    TBB runs; with the workqueue layer (not thread-safe) the backend serialises the calls."""
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_THREADING_LAYER"}
    env["NUMBA_NUM_THREADS"] = "2"
    env["INVOLUTION_DYNAMIC_THREADS"] = "0"  # two threads per call even on a busy machine
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    try:
        done = subprocess.run([sys.executable, "-c", THREADS_AND_FORK_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"threads or fork Pool hung (layer {layer}): {error.stderr!r}")
    assert done.returncode == 0, f"layer {layer}: rc {done.returncode}\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["layer"] == (layer or "tbb"), report
    assert report["thread_failures"] == [] and report["fork_ok"] == [True] * 4, report


CACHE_SCRIPT = textwrap.dedent("""
    import json, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import numpy as np
        from involution.fast import cpu, runtime
        out = cpu.involution2d(np.ones((1, 2, 5, 5)), np.ones((1, 1, 3, 3, 5, 5)), 1, 1, 1, version=2)
    print(json.dumps({"file": cpu.__file__, "cache": runtime.CACHE, "folder": runtime.cache_folder(),
                      "centre": out[0, 0, 2, 2],
                      "warnings": [str(w.message) for w in caught]}))
""")


def test_import_survives_an_unwritable_cache(tmp_path):
    """Installed read-only with a read-only home: none of numba's own cache folders is writable. (Files stand
    where the directories would be, which stops root too.) Importing and running still work, without a warning:
    the kernels cache in the per-user folder under the temporary directory (``runtime.cache_folder``)."""
    package = tmp_path / "site" / "involution"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "involution"), package, ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "fast"), package / "fast", ignore=ignore)
    (package / "fast" / "__pycache__").write_text("not a directory")
    blocked = tmp_path / "home-is-a-file"
    blocked.write_text("")
    env = {key: value for key, value in os.environ.items() if key not in ("XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(blocked), NUMBA_CACHE_DIR=str(blocked / "numba"), PYTHONPATH=str(tmp_path / "site"),
               PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(str(package)), f"imported {report['file']}, not the read-only copy"
    assert report["cache"] is True and report["centre"] == 9.0 and report["warnings"] == [], report
    assert report["folder"].startswith(os.path.join(tempfile.gettempdir(), "involution-numba-")), report
