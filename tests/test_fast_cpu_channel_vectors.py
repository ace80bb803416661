"""The channel-vector kernels (``involution.fast.simd``: forward v6 and v8, blocks of four and eight positions; grad_kernel
v7, channels in lanes, and v9, output positions in lanes) and their building blocks against the NumPy reference: the shared cases, channel
counts that leave partial vectors, rows narrower than a block, non-finite values, thread counts, bounds checks."""
import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from involution.fast import cpu, cpu_blocks, cpu_grad_kernel, runtime  # noqa: E402
from involution.reference import involution2d  # noqa: E402

from cases import (CASES, SIMD_BOUNDSCHECK_PROBE, assert_backward_matches, assert_matches_reference_on,  # noqa: E402
                   case_id, make_case)

# (B, C, G, H, W, Kh, Kw, stride, padding, dilation): what the channel-vector kernels add to the shared cases. Channels per group 8 (one
# narrow vector), 24 and 40 (a full block and a partial one), output rows of 3, 4 and 5 (narrower than, equal to
# and one past a block of POSITIONS), several bands, dilation with stride 1; rows of 7 (stride 1) and 6 (stride 2,
# 20 channels: a partial second vector): v8's blocks of eight with missing positions.
CHANNEL_CASES = [
    (2, 16, 2, 9, 3, 3, 3, (1, 1), (1, 1), (1, 1)),
    (1, 48, 2, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    (1, 40, 1, 7, 5, 5, 5, (1, 1), (2, 2), (1, 1)),
    (2, 32, 1, 40, 9, 3, 7, (1, 2), (1, 3), (2, 1)),
    (1, 64, 4, 15, 15, 7, 7, (2, 2), (3, 3), (1, 1)),
    (1, 16, 1, 8, 7, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 20, 1, 6, 12, 5, 5, (1, 2), (2, 2), (1, 1)),
]
DTYPES = [np.float32, np.float64]
CHANNEL_VECTOR_VERSIONS = [6, 7, 8, 9]
# v8's row code paths: blocks of eight (stride 1 or 2, dilation 1 along rows; rows of 5 to 7 as one block with
# missing positions, wider rows ending in an overlapping block) and v6's blocks of four or single positions otherwise
V8_ROW_CASES = [(2, 24, 2, 4, width, 3, kernel_w, (2, stride), (1, 2), (1, dilation))
                for width in range(1, 20) for kernel_w in (1, 2, 7) for stride in (1, 2, 3) for dilation in (1, 2)
                if width + 4 >= (kernel_w - 1) * dilation + 1]


# v9's kernel gradient: its two kinds of tap block (two output rows by tap columns for stride and dilation 1 down the
# columns and Kh >= 7; flat blocks of 8 taps otherwise), its copies (stride 1 rows, stride 2 split into one or two
# phases, wider strides one value at a time), rows below, at and above a vector (float32: 8 lanes below 16 outputs,
# 16 from there; float64 half as many), groups of 8, 16 and 24 channels, odd bands (a spare row), Kh = 9 (column
# blocks with spare kernel rows).
V9_CASES = [
    (2, 16, 1, 9, 20, 3, 3, (1, 1), (1, 1), (1, 1)),  # 3x3: flat blocks and a tail; a vector and an overlapping one
    (1, 16, 2, 11, 7, 7, 7, (1, 1), (3, 3), (1, 1)),  # paired, 8 channels per group, rows of 7 (masked stores)
    (1, 48, 2, 13, 17, 7, 7, (1, 1), (3, 3), (1, 1)),  # paired, 24 channels per group, rows of 17
    (1, 16, 1, 12, 16, 9, 5, (1, 1), (4, 2), (1, 1)),  # paired, Kh = 9: three column blocks, spare kernel rows
    (1, 32, 2, 15, 15, 7, 7, (2, 2), (3, 3), (1, 1)),  # stride 2: two phases split by shuffles, rows of 8
    (2, 24, 1, 20, 40, 7, 7, (2, 2), (3, 3), (1, 1)),  # stride 2, rows of 20: several 64-byte splits per row
    (1, 16, 1, 13, 17, 3, 5, (3, 3), (2, 1), (2, 1)),  # stride 3: the phase copy one value at a time
    (1, 16, 1, 10, 30, 3, 3, (1, 2), (1, 1), (2, 2)),  # stride 2 with dilation 2 along rows: phase 0 only
    (1, 16, 1, 10, 9, 7, 7, (1, 1), (3, 3), (2, 1)),  # dilation 2 down the columns: flat blocks with Kh = 7
    (2, 8, 1, 5, 3, 3, 3, (1, 1), (1, 1), (1, 1)),  # rows of 3: narrower than any vector
    (1, 16, 1, 8, 8, 3, 3, (1, 1), (1, 1), (1, 1)),  # rows of 8: a whole float32 narrow vector, a float64 one
]
# v9's row code paths on the paired blocks (stride 1 down the columns, Kh = 7): every width from 1 to 19, strides 1-3
# and dilations 1-2 along rows (the flat cases: V8_ROW_CASES)
V9_ROW_CASES = [(1, 16, 1, 9, width, 7, kernel_w, (1, stride), (3, 2), (1, dilation))
                for width in range(1, 20) for kernel_w in (1, 3) for stride in (1, 2, 3) for dilation in (1, 2)
                if width + 4 >= (kernel_w - 1) * dilation + 1]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", V9_CASES, ids=[case_id(case) for case in V9_CASES])
def test_v9_grad_kernel_matches_reference(case, dtype):
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    grads = cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=9)
    assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, f"v9, {np.dtype(dtype)}, case {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_v9_grad_kernel_row_paths_match_reference(dtype):
    for case in V8_ROW_CASES + V9_ROW_CASES:
        x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype, seed=6)
        grads = cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=9)
        assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation,
                                f"v9, {np.dtype(dtype)}, case {case}")


def test_v9_plan_stays_within_its_scratch_budget():
    """v9's band never exceeds the output rows, and a band of more than one row fits SCRATCH_ELEMENTS per thread."""
    for out_h, out_w, kernel_h, stride, dilation in ((1, 5, 3, 1, 1), (56, 56, 7, 1, 1), (28, 28, 7, 2, 1),
                                                     (112, 112, 3, 1, 1), (7, 7, 7, 1, 1), (500, 3, 1, 300, 1)):
        for batch, workers in ((1, 1), (8, 2), (1, 16)):
            lanes, band, slot = cpu_grad_kernel.positions_plan(batch, 2, 16, out_h, out_w, kernel_h, kernel_h, stride, stride,
                                                    dilation, dilation, np.float32, workers)
            assert 1 <= band <= out_h and lanes in (8, 16), f"band {band}, lanes {lanes} for {out_h} output rows"
            assert band == 1 or slot <= cpu_blocks.SCRATCH_ELEMENTS, f"band {band}: {slot} scratch elements"


@pytest.mark.parametrize("version", CHANNEL_VECTOR_VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", CHANNEL_CASES, ids=[case_id(case) for case in CHANNEL_CASES])
def test_matches_reference(case, dtype, version):
    """The channel-vector cases (test_fast_cpu.py runs every version on the shared ones)."""
    assert_matches_reference_on(case, dtype, functools.partial(cpu.involution2d, version=version),
                                functools.partial(cpu.involution2d_backward, version=version), f"version {version}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_v8_is_bitwise_v6(dtype):
    """v8 keeps v6's summation order (u, then v, from zero, fused multiply-adds) on every row code path."""
    for case in CHANNEL_CASES + V8_ROW_CASES:
        x, kernel, _, stride, padding, dilation = make_case(case, dtype, seed=4)
        v6, v8 = (cpu.involution2d(x, kernel, stride, padding, dilation, version=v) for v in (6, 8))
        assert np.array_equal(v6, v8, equal_nan=True), (
            f"case {case}: v8 differs from v6 by up to {np.abs(v6 - v8).max()}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_copy_transposed_is_a_transpose_with_zero_lanes(dtype):
    """``simd.copy_transposed``, v8's channels-last copy: rows ``l < count`` of the source block become lane ``l`` of
    consecutive vectors, lanes ``l >= count`` are zero, nothing outside the block is written."""
    from involution.fast import simd

    @numba.njit
    def copy(source, start, step, count, target, target_start, lanes):
        simd.copy_transposed(source, start, step, count, target, target_start, lanes)

    source = np.arange(1, 40 * 50 + 1).astype(dtype)
    for lanes in (4, 8, 16):
        for count in (1, lanes // 2 + 1, lanes):
            target = np.full(lanes * lanes + 5, -1, dtype)
            copy(source, 7, 50, count, target, 3, simd.Lanes(lanes))
            expected = np.zeros((lanes, lanes), dtype)  # [position, lane]
            expected[:, :count] = source[7 + 50 * np.arange(count)[None, :] + np.arange(lanes)[:, None]]
            got = target[3:3 + lanes * lanes].reshape(lanes, lanes)
            assert np.array_equal(got, expected), f"lanes {lanes}, count {count}: got\n{got}\nexpected\n{expected}"
            assert (target[:3] == -1).all() and (target[3 + lanes * lanes:] == -1).all(), "wrote outside the block"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_masked_loads_stores_and_even_odd(dtype):
    """v9's vector moves: ``simd.store_first`` writes exactly the first ``count`` lanes, ``simd.load_range`` reads
    lanes ``first <= l < stop`` and zeroes the others (even where they would lie outside the array), ``simd.even_odd``
    splits two vectors into their even and odd elements."""
    from involution.fast import simd

    @numba.njit
    def store_first(source, target, start, count, lanes):
        simd.store_first(target, start, simd.load(source, 0, lanes), count)

    @numba.njit
    def load_range(source, target, start, first, stop, lanes):
        simd.store(target, 0, simd.load_range(source, start, first, stop, lanes))

    @numba.njit
    def even_odd(source, target, lanes):
        even, odd = simd.even_odd(simd.load(source, 0, lanes), simd.load(source, simd.count(lanes), lanes))
        simd.store(target, 0, even)
        simd.store(target, simd.count(lanes), odd)

    source = np.arange(1, 41).astype(dtype)
    for lanes in (4, 8, 16):
        for count in range(lanes + 1):
            target = np.full(40, -1, dtype)
            store_first(source, target, 20, count, simd.Lanes(lanes))
            expected = np.full(40, -1, dtype)
            expected[20:20 + count] = source[:count]
            assert np.array_equal(target, expected), f"store_first: lanes {lanes}, count {count}: {target}"
        for start, first, stop in ((0, 0, lanes), (-3, 3, lanes), (40 - lanes + 2, -5, lanes - 2), (5, 2, 1),
                                   (-lanes, lanes, 2 * lanes), (7, 1, lanes - 1)):
            target = np.full(lanes, -1, dtype)
            load_range(source, target, start, first, stop, simd.Lanes(lanes))
            expected = np.array([source[start + l] if first <= l < stop else 0 for l in range(lanes)], dtype)
            assert np.array_equal(target, expected), f"load_range({start}, {first}, {stop}), lanes {lanes}: {target}"
        target = np.empty(2 * lanes, dtype)
        even_odd(source, target, simd.Lanes(lanes))
        assert np.array_equal(target, np.concatenate([source[0:2 * lanes:2], source[1:2 * lanes:2]])), target


@pytest.mark.parametrize("version", CHANNEL_VECTOR_VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_non_finite_values_propagate_like_the_reference(dtype, version):
    """An inf weight on a tap that reads the zero padding gives inf * 0 = NaN, as the definition does; an inf or
    NaN input reaches exactly the outputs whose windows hold it."""
    case = (1, 16, 1, 6, 7, 3, 3, (1, 1), (1, 1), (1, 1))
    x, kernel, _, stride, padding, dilation = make_case(case, dtype)
    kernel[0, 0, 0, 0, 0, 3] = np.inf  # tap (0, 0) of output (0, 3) reads padded row -1
    x[0, 5, 4, 6] = np.nan
    x[0, 9, 0, 0] = -np.inf
    expected = involution2d(x, kernel, stride, padding, dilation)
    got = cpu.involution2d(x, kernel, stride, padding, dilation, version=version)
    assert np.isnan(expected[:, :, 0, 3]).all(), "the reference should give NaN on every channel of output (0, 3)"
    for name, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        assert np.array_equal(mask(got), mask(expected)), (
            f"{name} positions differ: v{version} {np.argwhere(mask(got)).tolist()} reference "
            f"{np.argwhere(mask(expected)).tolist()}")
    # elsewhere, the rounding bound of 9 terms: 9 * eps * sum_taps |kernel * x|
    magnitude = involution2d(np.abs(np.nan_to_num(x, posinf=0, neginf=0)), np.abs(np.nan_to_num(kernel, posinf=0)),
                             stride, padding, dilation)
    finite = np.isfinite(expected)
    error = np.abs(got[finite] - expected[finite])
    bound = 9 * np.finfo(dtype).eps * magnitude[finite]
    assert (error <= bound).all(), f"finite outputs off by up to {(error / bound).max():.2f} times the rounding bound"


@pytest.mark.parametrize("version, case", [(version, CHANNEL_CASES[4]) for version in CHANNEL_VECTOR_VERSIONS]
                         + [(9, V9_CASES[2])], ids=lambda value: case_id(value) if isinstance(value, tuple) else value)
def test_bitwise_identical_for_any_thread_count(version, case, monkeypatch):
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)  # the thread counts asked for, even when busy
    x, kernel, grad_out, stride, padding, dilation = make_case(case, np.float32, seed=5)

    def results():
        return (cpu.involution2d(x, kernel, stride, padding, dilation, version=version),
                *cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version))

    threads = numba.get_num_threads()
    first = results()
    try:
        numba.set_num_threads(1)
        single = results()
    finally:
        numba.set_num_threads(threads)
    for name, a, b, c in zip(("out", "grad_x", "grad_kernel"), first, single, results()):
        assert np.array_equal(a, b), f"v{version} {name} differs between {threads} threads and 1 thread"
        assert np.array_equal(a, c), f"v{version} {name} differs between two runs"


def test_unit_chunks_hand_out_one_unit_at_a_time_and_restore_the_callers_size():
    import numba

    previous = numba.set_parallel_chunksize(3)
    try:
        with pytest.raises(ZeroDivisionError), cpu_blocks.UnitChunks():
            assert numba.get_parallel_chunksize() == 1, numba.get_parallel_chunksize()
            1 / 0
        assert numba.get_parallel_chunksize() == 3, "the caller's chunk size was not restored"
    finally:
        numba.set_parallel_chunksize(previous)


def test_unit_chunks_compile_nothing_in_a_new_process():
    """Every channel-vector call enters UnitChunks: a new process must not pay a compilation for it (a jitted setter cannot
    be cached: 0.08-0.15 s in each new process)."""
    script = textwrap.dedent("""
        from numba.core import event
        from involution.fast import cpu_blocks
        with event.install_recorder("numba:compile") as recorder, cpu_blocks.UnitChunks():
            pass
        print(len(recorder.buffer))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0", f"compile events in a new process: {result.stdout}"


def test_unit_chunks_in_another_thread_leave_this_threads_chunk_size():
    import threading

    import numba

    seen = []

    def other_thread():
        with cpu_blocks.UnitChunks():
            seen.append(numba.get_parallel_chunksize())

    previous = numba.set_parallel_chunksize(3)
    try:
        with cpu_blocks.UnitChunks():
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
            assert numba.get_parallel_chunksize() == 1, "another thread's block changed this thread's chunk size"
        assert seen == [1] and numba.get_parallel_chunksize() == 3, seen
    finally:
        numba.set_parallel_chunksize(previous)


def test_lanes_carry_their_numba_type():
    import numba

    from involution.fast import simd

    assert simd.Lanes(8) is simd.Lanes(8) and simd.Lanes(8) is not simd.Lanes(16)
    assert numba.typeof(simd.Lanes(16)) == simd.LanesType(16) and simd.Lanes(16).count == 16


def test_bands_and_lanes_cover_every_shape():
    """The band never exceeds the output rows or the scratch budget; a vector holds 8 to 16 float32 channels."""
    for group_channels, lanes in ((1, 8), (8, 8), (9, 16), (16, 16), (64, 16)):
        assert cpu_blocks.channel_lanes(group_channels, np.float32) == lanes
    assert cpu_blocks.channel_lanes(16, np.float64) == 8
    for out_h, wide, kernel_h, stride, dilation in ((1, 5, 3, 1, 1), (56, 62, 7, 1, 1), (28, 61, 7, 2, 1),
                                                    (1, 4000, 3, 1, 2000), (500, 3, 1, 3000, 1)):
        band = cpu_blocks.rows_per_unit(1, 1, 16, 16, out_h, wide, kernel_h, stride, dilation, 2)
        assert 1 <= band <= out_h, f"band {band} for {out_h} output rows"
        if band > 1:
            rows_in = (band - 1) * stride + (kernel_h - 1) * dilation + 1
            assert rows_in * wide * 16 <= cpu_blocks.SCRATCH_ELEMENTS, f"band {band} overflows the scratch"


BOUNDSCHECK_SCRIPT = textwrap.dedent("""
    import numba, numpy as np
    from involution.fast import cpu, simd
    from involution.reference import involution2d, involution2d_backward
""") + SIMD_BOUNDSCHECK_PROBE + textwrap.dedent("""
    for case, versions in {plan!r}:
        batch, channels, groups, height, width, kh, kw, stride, padding, dilation = case
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
        out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        kernel = rng.standard_normal((batch, groups, kh, kw, out_h, out_w)).astype(np.float32)
        grad_out = rng.standard_normal((batch, channels, out_h, out_w)).astype(np.float32)
        expected = involution2d(x.astype(np.float64), kernel.astype(np.float64), stride, padding, dilation)
        expected_grad = involution2d_backward(grad_out.astype(np.float64), x.astype(np.float64),
                                              kernel.astype(np.float64), stride, padding, dilation)[1]
        for version in versions:
            got = cpu.involution2d(x, kernel, stride, padding, dilation, version=version)
            got_grad = cpu.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version)[1]
            if not (np.allclose(got, expected, rtol=1e-4, atol=1e-4)
                    and np.allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-3)):
                raise SystemExit(f"v{{version}} differs from the reference, case {{case}}")
    print("ok")
""")


def test_never_reads_out_of_bounds(tmp_path):
    """The channel-vector kernels compiled fresh with numba's bounds checks, which then cover their vector loads and stores too."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    plan = ([(case, CHANNEL_VECTOR_VERSIONS) for case in CASES + CHANNEL_CASES + V8_ROW_CASES[::5]]
            + [(case, [9]) for case in V9_CASES + V9_ROW_CASES[::7]])  # some of v9's are too sparse for v3's scratch
    script = BOUNDSCHECK_SCRIPT.format(plan=plan)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and result.stdout.split() == ["ok"], (
        f"stdout {result.stdout!r}\nstderr {result.stderr[-3000:]}")
