"""The numba CPU backend: every numbered kernel and the dispatcher against the NumPy reference, bounds, determinism."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("torch")  # the tolerance magnitudes come from the torch oracle

from involution.fast import cpu  # noqa: E402
from involution.reference import involution2d, involution2d_backward  # noqa: E402

from cases import assert_backward_matches, assert_forward_matches, case_id, good_args, make_case  # noqa: E402

# (B, C, G, H, W, Kh, Kw, stride, padding, dilation): odd sizes, strides 1-3, dilations 1-2, rectangular
# kernels, G = 1 and G = C, taps reading past every edge, images tall enough for several v3 bands.
CASES = [
    (1, 4, 1, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 6, 3, 7, 4, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 4, 4, 8, 9, 5, 3, (3, 2), (2, 0), (1, 2)),
    (2, 8, 2, 6, 6, 3, 3, (2, 2), (2, 2), (2, 2)),
    (1, 3, 3, 2, 3, 3, 3, (1, 1), (1, 1), (1, 1)),  # input smaller than the kernel
    (2, 4, 2, 11, 5, 3, 2, (2, 3), (1, 2), (2, 1)),  # rectangular kernel
    (1, 4, 2, 1, 1, 1, 1, (1, 1), (0, 0), (1, 1)),  # 1x1 everything
    (1, 34, 2, 9, 10, 7, 7, (1, 1), (3, 3), (1, 1)),  # 17 channels per group, RedNet's K7
    (2, 32, 2, 13, 11, 7, 5, (2, 2), (3, 2), (1, 1)),  # 16 channels per group, stride 2, odd sizes
    (1, 5, 5, 12, 7, 3, 3, (3, 1), (0, 4), (2, 2)),  # padding wider than the kernel's reach
    (1, 4, 2, 5, 7, 2, 2, (2, 3), (0, 0), (1, 1)),  # last input row and columns read by no tap
    (1, 4, 2, 37, 30, 3, 3, (1, 1), (1, 1), (1, 1)),  # 3 bands of wide rows, the last one short
    (1, 4, 1, 70, 33, 3, 5, (2, 2), (1, 2), (1, 1)),  # 2 bands, stride 2
]
IDS = [case_id(case) for case in CASES]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("version", cpu.VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_version_matches_reference(case, dtype, version):
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    context = f"version {version}, {np.dtype(dtype)}, case {case}"
    out = cpu.involution2d(x, kernel, stride, padding, dilation, version=version)
    assert_forward_matches(out, x, kernel, stride, padding, dilation, context)
    grads = cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version)
    assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, context)


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


def test_bitwise_identical_across_runs_and_thread_counts():
    numba = pytest.importorskip("numba")
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
    from involution.reference import involution2d, involution2d_backward

    @numba.njit
    def read_past_end(array):
        return array[array.size]

    try:  # proves the bounds checks are compiled in: without them this reads past the end silently
        read_past_end(np.zeros(3))
        sys.exit("NUMBA_BOUNDSCHECK is not active")
    except IndexError:
        pass
    cases = {cases!r}
    for case in cases:
        batch, channels, groups, height, width, kh, kw, stride, padding, dilation = case
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, channels, height, width))
        out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        kernel = rng.standard_normal((batch, groups, kh, kw, out_h, out_w))
        grad_out = rng.standard_normal((batch, channels, out_h, out_w))
        expected = (involution2d(x, kernel, stride, padding, dilation),
                    *involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
        for version in cpu.VERSIONS:
            got = (cpu.involution2d(x, kernel, stride, padding, dilation, version=version),
                   *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version))
            for name, a, b in zip(("out", "grad_x", "grad_kernel"), got, expected):
                if not np.allclose(a, b, rtol=1e-10, atol=1e-10):
                    sys.exit(f"version {{version}} {{name}} differs from the reference, case {{case}}")
    print("ok", len(cases))
""")


@pytest.fixture(scope="module", autouse=True)
def boundscheck_run(tmp_path_factory):
    """The bounds-checked subprocess, started before this module's first test: its fresh compile (one core)
    overlaps the in-process compiles of the other tests (the other core)."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1",
           "NUMBA_CACHE_DIR": str(tmp_path_factory.mktemp("numba_cache_boundscheck"))}
    process = subprocess.Popen([sys.executable, "-c", BOUNDSCHECK_SCRIPT.format(cases=CASES)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    process.kill()
    process.communicate()


def test_kernels_never_read_out_of_bounds(boundscheck_run):
    """All versions, compiled fresh with numba's bounds checks, over odd/strided/dilated/padded shapes."""
    stdout, stderr = boundscheck_run.communicate(timeout=600)
    assert boundscheck_run.returncode == 0, f"stdout {stdout!r}\nstderr {stderr[-3000:]}"
    assert stdout.split() == ["ok", str(len(CASES))], stdout


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
