"""The span convolution fused with the involution forward (``involution.fast.cpu_forward_span``, the torch op
``involution::involution2d_span`` and :class:`Involution2d`'s inference path) computes what the two steps compute.

Why: the fused kernel generates each block's kernel into a small buffer and never writes it, so nothing else checks
that it generates the right taps for the right group and position, that every output element is written (outputs
start as NaN here), that the zero padding is multiplied (``0 * inf`` is NaN, as in the op), that its result does not
depend on numba's thread count, and that the layer takes it exactly for inference on channels-last CPU tensors (and
the two-step, differentiable path otherwise). The cases cover group sizes 16, 8, 5, 3 and 24 (full and masked
channel vectors), kernels 1x3, 3x3, 5x3 and 7x7 (4, 2 and 1 taps per multiply-add chain), stride 1, 2 and (2, 1),
dilation 1 and 2, same padding and no padding, position counts that are not a multiple of the vector length, a
kernel wider than the input, and R = 1, 3 and 16 hidden channels.

Tolerances derive from the dtype: ``2**10`` epsilons relative to the largest magnitude of the expected result (as
tests/test_network_speed.py and tests/test_rednet_channels_last.py), far above the rounding of a different summation
order and far below what a wrong tap, group, position or bias gives.
"""
import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
numba = pytest.importorskip("numba")

from involution.fast import cpu, cpu_forward_span, runtime  # noqa: E402  (before numba.set_num_threads)
from involution.spec import check_geometry  # noqa: E402
from involution.torch import models, ops  # noqa: E402
from involution.torch.span import involution2d_span  # noqa: E402

from test_network_speed import assert_close, randomize_batch_norms  # noqa: E402
from test_openmp import in_forked_child  # noqa: E402

SPAN_EVENT = "involution::involution2d_span"

# (B, C, G, H, W, (Kh, Kw), stride, padding, dilation, R). Group channels C / G: 16, 8, 5, 3, 24. Positions
# B * Ho * Wo: 108, 60, 60, 42, 234, 12, 84, 63, 14, 1320, 30, 30, 1110 (none a multiple of 16): blocks of
# positions that span several output rows, partial blocks at the end of each image, images smaller than a block,
# group channels that fill whole vectors (16, 8; 24 in float64) or not (5, 3; 24 in float32), and on the two large
# cases several blocks per prange unit (reused buffers).
CASES = [
    (1, 32, 2, 9, 12, (7, 7), 1, 3, 1, 16),          # RedNet's 7x7, groups of 16, same padding
    (2, 16, 2, 11, 10, (3, 3), 2, 1, 1, 3),          # stride 2, groups of 8
    (3, 10, 2, 7, 5, (5, 3), (2, 1), (2, 1), 1, 1),  # stride (2, 1), groups of 5, R = 1, 15 taps (4+4+4+1+1+1)
    (1, 9, 3, 6, 7, (1, 3), 1, (0, 1), 1, 3),        # 1x3 (3 taps: one chain each), groups of 3
    (2, 48, 2, 9, 13, (3, 3), 1, 2, 2, 16),          # dilation 2 with same padding, groups of 24
    (1, 16, 1, 3, 4, (7, 7), 1, 3, 1, 3),            # K > H and K > W: every window reads the padding
    (2, 32, 4, 8, 9, (3, 3), 1, 0, 1, 16),           # no padding: every window inside
    (1, 24, 1, 13, 17, (7, 7), 2, 3, 1, 1),          # stride 2, one group of 24, R = 1
    (1, 15, 3, 10, 11, (5, 3), 1, 0, 2, 3),          # dilation 2, no padding, groups of 5
    (2, 16, 2, 20, 33, (3, 3), 1, 1, 1, 16),         # wide rows: many blocks on the unchecked path
    (2, 40, 5, 5, 9, (1, 3), 2, (0, 2), 2, 1),       # 1x3, stride 2, dilation 2, groups of 8
    (3, 6, 2, 4, 22, (3, 3), 2, 0, 1, 3),            # groups of 3, no padding, stride 2
    (1, 32, 2, 30, 37, (5, 3), 1, (2, 1), 1, 3),     # 1110 positions: several blocks per prange unit
]


def case_id(case):
    return "-".join(str(item).replace(" ", "") for item in case)


def output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def as_pair(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def span_arrays(case, dtype, seed=0):
    """Random channels-last ``(x, hidden, weight, bias)`` of ``dtype`` for ``case`` and the geometry."""
    batch, channels, groups, height, width, (kernel_h, kernel_w), stride, padding, dilation, reduced = case
    stride, padding, dilation = as_pair(stride), as_pair(padding), as_pair(dilation)
    out_h = output_size(height, kernel_h, stride[0], padding[0], dilation[0])
    out_w = output_size(width, kernel_w, stride[1], padding[1], dilation[1])
    geometry = check_geometry((batch, channels, height, width), (batch, groups, kernel_h, kernel_w, out_h, out_w),
                              stride, padding, dilation)
    rng = np.random.default_rng(seed)
    generated = groups * kernel_h * kernel_w
    x = rng.standard_normal((batch, height, width, channels)).astype(dtype)
    hidden = rng.standard_normal((batch, out_h, out_w, reduced)).astype(dtype)
    weight = (rng.standard_normal((generated, reduced)) / np.sqrt(reduced)).astype(dtype)
    bias = rng.standard_normal(generated).astype(dtype)
    return (x, hidden, weight, bias), geometry


def run_span(arrays, geometry):
    """``cpu_forward_span.run`` into a NaN-filled ``out`` (every element must be written), result (B, C, Ho, Wo)."""
    x = arrays[0]
    out = np.full(cpu_forward_span.shapes(geometry, arrays[1].shape[-1])[4], np.nan, x.dtype)
    cpu_forward_span.run((*arrays, out), geometry)
    return out.transpose(0, 3, 1, 2)


def expected_span(arrays, geometry):
    """The definition: the kernel generated in float64 by einsum, cast to the dtype, then the op
    (``involution.fast.cpu.involution2d``) on it; result (B, C, Ho, Wo)."""
    x, hidden, weight, bias = arrays
    with np.errstate(invalid="ignore", over="ignore"):
        kernel = np.einsum("kr,bijr->bkij", weight.astype(np.float64), hidden.astype(np.float64))
        kernel = kernel + bias.astype(np.float64)[None, :, None, None]
    kernel = np.ascontiguousarray(kernel.reshape(geometry.kernel_shape).astype(x.dtype))
    return cpu.involution2d(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), kernel, geometry.stride,
                            geometry.padding, geometry.dilation)


def assert_arrays_close(got, expected, what, rtol):
    """No NaN left in ``got`` where ``expected`` has none, and ``max|got - expected| <= rtol * max|expected|``,
    reporting the worst element's index and values."""
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    unwritten = np.argwhere(np.isnan(got) & ~np.isnan(expected))
    assert unwritten.size == 0, (f"{what}: {len(unwritten)} elements NaN (unwritten?), first at (b, c, i, j) = "
                                 f"{tuple(unwritten[0])}, expected {expected[tuple(unwritten[0])]!r}")
    error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    scale = float(np.abs(expected).max())
    worst = np.unravel_index(int(error.argmax()), error.shape)
    assert error.max() <= rtol * scale, (
        f"{what}: max error {error.max():.3e} > {rtol:.2e} * max|expected| {scale:.3e} at (b, c, i, j) = "
        f"{tuple(int(k) for k in worst)}: got {got[worst]!r}, expected {expected[worst]!r}")


def first_difference(mask_got, mask_expected):
    differ = np.argwhere(mask_got != mask_expected)
    if differ.size == 0:
        return "none"
    index = tuple(int(k) for k in differ[0])
    return f"{len(differ)} elements, first at (b, c, i, j) = {index}: got {mask_got[index]}, expected " \
           f"{mask_expected[index]}"


# --- 1. the kernel against the definition -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_span_kernel_is_the_definition(case, dtype):
    arrays, geometry = span_arrays(case, dtype)
    got = run_span(arrays, geometry)
    assert_arrays_close(got, expected_span(arrays, geometry), case_id(case), 2 ** 10 * np.finfo(dtype).eps)


# --- 2. non-finite values --------------------------------------------------------------------------------------
NON_FINITE_CASE = (2, 32, 2, 9, 10, (3, 3), 2, 1, 1, 3)  # padding read by row 0 / column 0 of every window


def assert_same_non_finite(got, expected, what):
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        assert np.array_equal(test(got), test(expected)), \
            f"{what}: {name} pattern differs from the op's: {first_difference(test(got), test(expected))}"
    finite = np.isfinite(expected)
    assert_arrays_close(np.where(finite, got, 0), np.where(finite, expected, 0), what,
                        2 ** 10 * np.finfo(got.dtype).eps)


@pytest.mark.parametrize("where", ["bias", "weight"])
def test_infinite_tap_on_the_padding_gives_nan_as_the_op(where):
    """Tap (0, 0) of group 1 made infinite: NaN at the outputs of group 1 whose tap (0, 0) reads the zero padding
    (``0 * inf``), infinite where it reads x, as ``cpu.involution2d`` on the generated kernel."""
    arrays, geometry = span_arrays(NON_FINITE_CASE, np.float32, seed=1)
    x, hidden, weight, bias = arrays
    tap = 1 * geometry.kernel_h * geometry.kernel_w  # group 1, tap (0, 0)
    if where == "bias":
        bias[tap] = np.inf
    else:
        weight[tap, 1] = np.inf
    got, expected = run_span(arrays, geometry), expected_span(arrays, geometry)
    assert_same_non_finite(got, expected, f"infinite {where}")
    group_channels = geometry.channels // geometry.groups
    nan = np.isnan(expected)
    # the first output row and column read the padding: NaN in group 1 only; the others read x
    assert nan[:, group_channels:, 0, :].all() and nan[:, group_channels:, :, 0].all(), "test case: no NaN at row 0"
    assert not nan[:, :group_channels].any() and not nan[:, :, 1:, 1:].any(), "test case: NaN beyond the padding"
    assert np.isnan(got[:, group_channels:, 0, 0]).all(), f"got {got[:, group_channels:, 0, 0]}"


def test_nan_in_x_reaches_only_the_windows_that_read_it():
    arrays, geometry = span_arrays(NON_FINITE_CASE, np.float64, seed=2)
    x = arrays[0]
    x[0, 4, 5, 3] = np.nan  # image 0, row 4, column 5, channel 3
    x[1, 0, 9, 20] = np.nan  # image 1, the last column, channel 20
    got, expected = run_span(arrays, geometry), expected_span(arrays, geometry)
    assert_same_non_finite(got, expected, "NaN in x")
    nan = np.isnan(expected)
    assert 0 < nan.sum() < 10, f"test case: {nan.sum()} NaN outputs"
    assert np.isnan(got[0, 3, 2, 2]) and np.isnan(got[1, 20, 0, 4]), "the windows reading the NaN"


# --- 3. thread counts -----------------------------------------------------------------------------------------
def test_span_kernel_is_bitwise_the_same_for_one_and_two_threads(monkeypatch):
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    if threads < 2:
        pytest.skip("numba has one thread")
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)  # the thread counts asked for, busy machine or not
    cases = (CASES[0], CASES[9], CASES[12])  # blocks per prange unit depend on the thread count in the large ones
    previous = numba.get_num_threads()
    results = {}
    try:
        for count in (1, threads):
            numba.set_num_threads(count)
            results[count] = [run_span(*span_arrays(case, np.float32, seed=3)) for case in cases]
            assert numba.get_num_threads() == count, "the kernel changed numba's thread count"
    finally:
        numba.set_num_threads(previous)
    for case, one, two in zip(cases, results[1], results[threads]):
        differ = np.argwhere(one != two)
        assert differ.size == 0, (f"{case_id(case)}: {len(differ)} elements differ between 1 and {threads} threads, "
                                  f"first {tuple(differ[0])}: {one[tuple(differ[0])]!r} vs {two[tuple(differ[0])]!r}")


def torch_runtime():
    from involution.torch.span import torch_openmp

    found = torch_openmp()
    if found is None:
        pytest.skip("torch has no GNU OpenMP runtime here (not a Linux wheel, or another parallel backend)")
    return found


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_span_pass_on_torchs_openmp_threads_is_bitwise_the_numba_one(monkeypatch, dtype):
    """The pass run as a cfunc on torch's GNU OpenMP threads (``run(..., runtime)``, what the torch op does) writes
    every element, bit for bit what numba's threads write, on one thread and two."""
    openmp = torch_runtime()
    monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)
    previous = numba.get_num_threads()
    try:
        for count in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(count)
            for case in (CASES[0], CASES[3], CASES[9], CASES[12]):
                arrays, geometry = span_arrays(case, dtype, seed=5)
                numba_threads = run_span(arrays, geometry)
                out = np.full(cpu_forward_span.shapes(geometry, arrays[1].shape[-1])[4], np.nan, dtype)
                calls = []
                monkeypatch.setattr(openmp, "run", lambda *arguments: calls.append(1) or type(openmp).run(
                    openmp, *arguments))
                cpu_forward_span.run((*arrays, out), geometry, openmp)
                monkeypatch.undo()
                monkeypatch.setattr(runtime, "DYNAMIC_THREADS", False)
                assert calls == [1], f"{case_id(case)}: the pass did not run on torch's OpenMP runtime"
                torch_threads = out.transpose(0, 3, 1, 2)
                differ = np.argwhere(~((torch_threads == numba_threads) | np.isnan(torch_threads) & np.isnan(
                    numba_threads)) | np.isnan(torch_threads))
                assert differ.size == 0, (
                    f"{case_id(case)}, {count} threads: {len(differ)} elements differ between torch's and numba's "
                    f"threads (or are unwritten), first {tuple(differ[0])}: {torch_threads[tuple(differ[0])]!r} vs "
                    f"{numba_threads[tuple(differ[0])]!r}")
    finally:
        numba.set_num_threads(previous)


def _child_pass(queue):
    """In a forked child: whether torch's OpenMP runtime, loaded there, says it is usable, and the pass's failure
    against the definition (None when it matches)."""
    from involution.fast import openmp

    try:
        child_runtime = openmp.Runtime("libgomp.so.1", loaded_only=True)  # loaded after the fork: still the parent's
        arrays, geometry = span_arrays(CASES[0], np.float32, seed=6)
        out = np.full(cpu_forward_span.shapes(geometry, arrays[1].shape[-1])[4], np.nan, np.float32)
        cpu_forward_span.run((*arrays, out), geometry, child_runtime)
        assert_arrays_close(out.transpose(0, 3, 1, 2), expected_span(arrays, geometry), "forked child",
                            2 ** 10 * np.finfo(np.float32).eps)
        queue.put((child_runtime.usable, None))
    except BaseException as error:  # reported to the parent, which fails the test
        queue.put((None, repr(error)))


def test_forked_child_runs_the_pass_on_numba_threads():
    """GNU OpenMP's pool does not survive fork() (a region on two threads waits forever, torch's own operators too):
    in a child, even one that loads the runtime itself after the fork, the runtime says it is not usable and the
    pass runs on numba's threads, with the right result."""
    torch_runtime()
    torch.randn(1 << 20).exp_()  # torch's OpenMP threads started in the parent
    usable, failure = in_forked_child(_child_pass, 120)
    assert failure is None, f"in the forked child: {failure}"
    assert usable is False, "in a forked child the OpenMP runtime says it is usable"


def test_a_failing_openmp_worker_is_reported():
    """A worker whose share raises (here: a buffer of 2**40 * 32 values cannot be allocated) sets the block's
    failure flag instead of returning as if it had written ``out``."""
    openmp = torch_runtime()
    arrays, geometry = span_arrays(CASES[0], np.float32)
    out = np.zeros(cpu_forward_span.shapes(geometry, arrays[1].shape[-1])[4], np.float32)
    block = cpu_forward_span.argument_block((*arrays, out), geometry, 1, 1)
    block[cpu_forward_span.BLOCK_FIELDS.index("reduced")] = 1 << 40
    openmp.run(cpu_forward_span.openmp_worker(np.dtype(np.float32), 16).address, block, 1)
    assert block[cpu_forward_span.FAILED] == 1, "the worker's failure was not reported"
    assert not out.any(), "a failed worker wrote to out"


# --- 4. run's checks --------------------------------------------------------------------------------------------
def test_run_rejects_arrays_that_do_not_match():
    (x, hidden, weight, bias), geometry = span_arrays(CASES[1], np.float32)
    out = np.empty(cpu_forward_span.shapes(geometry, hidden.shape[-1])[4], np.float32)
    taller = np.zeros((hidden.shape[0], hidden.shape[1] + 1, *hidden.shape[2:]), np.float32)
    with pytest.raises(ValueError, match=r"^hidden of the span forward .* shape \(2, 6, 5, 3\)"):
        cpu_forward_span.run((x, taller, weight, bias, out), geometry)
    with pytest.raises(ValueError, match=r"^weight of the span forward .* the result's dtype \(float32\)"):
        cpu_forward_span.run((x, hidden, weight.astype(np.float64), bias, out), geometry)
    strided = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # (B, H, W, C), not C order
    assert strided.shape == x.shape and not strided.flags.c_contiguous
    with pytest.raises(ValueError, match=r"^x of the span forward must be a C-contiguous"):
        cpu_forward_span.run((strided, hidden, weight, bias, out), geometry)
    with pytest.raises(ValueError, match=r"must be five ndarrays .*got 4"):
        cpu_forward_span.run((x, hidden, weight, out), geometry)
    with pytest.raises(ValueError, match=r"^out of the span forward"):
        cpu_forward_span.run((x, hidden, weight, bias, out[:, :-1]), geometry)
    read_only = out.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out of the span forward must be writeable"):
        cpu_forward_span.run((x, hidden, weight, bias, read_only), geometry)
    with pytest.raises(ValueError, match=r"^x of the span forward must be a C-contiguous"):  # a mask it would ignore
        cpu_forward_span.run((np.ma.masked_array(x), hidden, weight, bias, out), geometry)
    if x.shape == out.shape:  # stride 1, same padding: out may not alias x
        with pytest.raises(ValueError, match=r"must not share memory"):
            cpu_forward_span.run((x, hidden, weight, bias, x), geometry)
    with pytest.raises(TypeError, match=r"^geometry must be"):
        cpu_forward_span.run((x, hidden, weight, bias, out), None)


# --- 5. the torch op ------------------------------------------------------------------------------------------
def span_tensors(case, dtype=torch.float32, seed=0):
    """``x`` and ``hidden`` channels_last, ``weight (G*Kh*Kw, R, 1, 1)``, ``bias``, and the hyper-parameters."""
    (x, hidden, weight, bias), geometry = span_arrays(case, np.float64, seed)
    last = torch.channels_last
    x = torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2)
    hidden = torch.from_numpy(hidden).to(dtype).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=last) and hidden.is_contiguous(memory_format=last)
    weight = torch.from_numpy(weight).to(dtype)[:, :, None, None].contiguous()
    bias = torch.from_numpy(bias).to(dtype)
    hyper = ((geometry.kernel_h, geometry.kernel_w), geometry.stride, geometry.padding, geometry.dilation)
    return (x, hidden, weight, bias), hyper, geometry


def two_step(x, hidden, weight, bias, geometry):
    kernel = torch.nn.functional.conv2d(hidden, weight, bias).view(geometry.kernel_shape)
    return ops.involution2d(x, kernel, geometry.stride, geometry.padding, geometry.dilation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4], CASES[5]], ids=case_id)
def test_op_is_conv2d_then_the_op_and_returns_channels_last(case, dtype):
    tensors, hyper, geometry = span_tensors(case, dtype)
    got = involution2d_span(*tensors, *hyper)
    assert got.dtype == dtype and got.shape == geometry.out_shape, (got.dtype, got.shape)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous(), got.stride()
    assert_close(got, two_step(*tensors, geometry), case_id(case), 2 ** 10 * torch.finfo(dtype).eps)
    x, hidden, weight, bias = tensors
    contiguous = involution2d_span(x.contiguous(), hidden.contiguous(), weight, bias, *hyper)
    assert torch.equal(contiguous, got), "contiguous inputs give another result than channels_last ones"


def test_op_passes_opcheck():
    """opcheck's default tests (schema, autograd registration, fake tensor, AOT dispatch) on inputs that do not
    require grad: the op has no autograd formula, so with ``requires_grad`` the AOT test's backward must fail."""
    tensors, hyper, _ = span_tensors(CASES[1])
    hyper = [list(value) for value in hyper]
    x, hidden, weight, bias = tensors
    for inputs in ((x, hidden, weight, bias), (x.contiguous(), hidden.contiguous(), weight, bias)):
        torch.library.opcheck(torch.ops.involution.involution2d_span.default, (*inputs, *hyper))


def test_op_is_called_directly_in_plain_eager_and_dispatched_otherwise(monkeypatch):
    """Plain eager calls (no derivative wanted, no mode, tracer or profiler) run the implementation without the
    dispatcher, with the same result; under a dispatch mode the op is dispatched, so the mode sees it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from involution.torch import span

    tensors, hyper, _ = span_tensors(CASES[0])
    dispatched = []
    original = span._involution2d_span
    monkeypatch.setattr(span, "_involution2d_span", lambda *arguments: dispatched.append(1) or original(*arguments))
    direct = involution2d_span(*tensors, *hyper)
    assert not dispatched, "a plain eager call went through the dispatcher"

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen() as mode:
        through_mode = involution2d_span(*tensors, *hyper)
    assert dispatched and any("involution2d_span" in name for name in mode.names), mode.names
    assert torch.equal(direct, through_mode), "the direct call and the dispatched op differ"
    x, hidden, weight, bias = tensors
    dispatched.clear()

    def one_image(image, image_hidden):
        return involution2d_span(image.unsqueeze(0), image_hidden.unsqueeze(0), weight, bias, *hyper)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's slow vmap fallback for ops without a batching rule
        mapped = torch.func.vmap(one_image)(x, hidden)
    assert dispatched, "under vmap the op was called directly (its tensors are vmap's)"
    assert_close(mapped, direct, "vmap over the batch", 2 ** 10 * torch.finfo(x.dtype).eps)


def test_op_refuses_a_forward_mode_derivative():
    from torch.autograd import forward_ad

    (x, hidden, weight, bias), hyper, _ = span_tensors(CASES[1])
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match="no forward-mode derivative"):
            involution2d_span(dual, hidden, weight, bias, *hyper)


def test_op_refuses_to_differentiate_instead_of_dropping_the_gradient():
    (x, hidden, weight, bias), hyper, _ = span_tensors(CASES[1])
    x = x.clone().requires_grad_(True)
    out = involution2d_span(x, hidden, weight, bias, *hyper)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        out.sum().backward()
    assert x.grad is None, "a gradient appeared through an op without a derivative"


def test_op_with_an_empty_batch_returns_an_empty_channels_last_output():
    (x, hidden, weight, bias), hyper, geometry = span_tensors(CASES[1])
    out = involution2d_span(x[:0], hidden[:0], weight, bias, *hyper)
    assert out.shape == (0, *geometry.out_shape[1:]), out.shape
    assert out.is_contiguous(memory_format=torch.channels_last), out.stride()


def test_op_fake_and_meta_give_the_real_shape_and_strides():
    from torch._subclasses.fake_tensor import FakeTensorMode

    tensors, hyper, _ = span_tensors(CASES[1])
    real = involution2d_span(*tensors, *hyper)
    meta = involution2d_span(*(tensor.to("meta") for tensor in tensors), *hyper)
    assert meta.device.type == "meta" and meta.shape == real.shape and meta.stride() == real.stride(), meta.stride()
    with FakeTensorMode() as mode:
        fake = involution2d_span(*(mode.from_tensor(tensor) for tensor in tensors), *hyper)
    assert fake.shape == real.shape and fake.stride() == real.stride(), fake.stride()


def test_op_rejects_what_does_not_fit():
    (x, hidden, weight, bias), hyper, _ = span_tensors(CASES[1])
    with pytest.raises(TypeError, match="float16"):
        involution2d_span(x.half(), hidden.half(), weight.half(), bias.half(), *hyper)
    with pytest.raises(TypeError, match=r"^hidden must have the dtype of x \(torch.float32\), got torch.float64"):
        involution2d_span(x, hidden.double(), weight, bias, *hyper)
    with pytest.raises(ValueError, match=r"^bias must have shape \(18,\)"):
        involution2d_span(x, hidden, weight, bias[:-1], *hyper)
    with pytest.raises(ValueError, match=r"^hidden must have shape \(2, 3, 6, 5\) \(x.s batch, weight.shape\[1\] channels"):
        involution2d_span(x, hidden[:, :2], weight, bias, *hyper)
    with pytest.raises(ValueError, match=r"^weight must be a 1x1 convolution's weight"):
        involution2d_span(x, hidden, weight[:-1], bias[:-1], *hyper)
    for name, index in (("hidden", 1), ("weight", 2), ("bias", 3)):  # a meta tensor beside CPU ones
        arguments = [x, hidden, weight, bias]
        arguments[index] = arguments[index].to("meta")
        with pytest.raises(ValueError, match=rf"^{name} must be on the device of x \(cpu\), got meta"):
            involution2d_span(*arguments, *hyper)
    with pytest.raises(ValueError, match=r"^output size would be"):  # a dilated kernel wider than x
        involution2d_span(x, hidden, weight, bias, hyper[0], hyper[1], 0, 9)


def test_op_names_hidden_when_its_positions_do_not_fit():
    """``hidden`` must have x's batch and the output's positions; the error names ``hidden`` (the argument passed),
    not the generated kernel the caller never sees."""
    (x, hidden, weight, bias), hyper, _ = span_tensors(CASES[1])
    with pytest.raises(ValueError, match="hidden"):  # 6x4 positions, the output has 6x5
        involution2d_span(x, hidden[:, :, :, :-1], weight, bias, *hyper)
    with pytest.raises(ValueError, match="hidden"):  # batch 1, x has 2
        involution2d_span(x, hidden[:1], weight, bias, *hyper)


# --- 6. the layer's routing -----------------------------------------------------------------------------------
def span_calls(function, *args) -> tuple[int, object]:
    """How many times ``function(*args)`` calls the fused op (``torch.profiler`` events), and its result."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        result = function(*args)
    return sum(event.count for event in profiler.key_averages() if event.key == SPAN_EVENT), result


# (channels, kernel_size, stride, group_channels, reduction, kernel_gen, dilation, H, W)
LAYERS = [(32, 7, 1, 16, 4, "bottleneck", 1, 9, 11), (24, 3, 2, 8, 4, "bottleneck", 1, 10, 9),
          (15, 5, 1, 5, 3, "linear", 2, 8, 7), (48, 3, 1, 24, 4, "bottleneck", 1, 5, 6)]


def make_layer(spec, dtype=torch.float32, seed=0):
    channels, kernel_size, stride, group_channels, reduction, kernel_gen, dilation, height, width = spec
    with torch.random.fork_rng(devices=[]):  # the global RNG left as it was
        torch.manual_seed(seed)
        layer = models.Involution2d(channels, kernel_size, stride, group_channels, reduction, kernel_gen, dilation,
                                    backend="fast")
    layer = randomize_batch_norms(layer, seed).to(dtype).eval()
    x = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return layer, x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spec", LAYERS, ids=case_id)
def test_layer_fuses_for_inference_with_the_two_step_result(spec, dtype):
    layer, x = make_layer(spec, dtype)
    assert layer.fuse_span
    with torch.no_grad():
        fused_calls, fused = span_calls(layer, x)
        layer.fuse_span = False
        plain_calls, plain = span_calls(layer, x)
    assert fused_calls == 1, f"{SPAN_EVENT} called {fused_calls} times on the inference path"
    assert plain_calls == 0, f"{SPAN_EVENT} called {plain_calls} times with fuse_span = False"
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert_close(fused, plain, f"{case_id(spec)} fused against two steps", 2 ** 10 * torch.finfo(dtype).eps)


def test_layer_takes_the_two_steps_where_it_must():
    layer, x = make_layer(LAYERS[0])
    with torch.no_grad():
        _, expected = span_calls(layer, x)
        calls, out = span_calls(layer, x.contiguous())
        assert calls == 0, f"contiguous x: {calls} fused calls"
        assert_close(out, expected, "contiguous x")
        taps = copy.deepcopy(layer)
        taps.set_backend("taps")
        calls, out = span_calls(taps, x)
        assert calls == 0, f"taps backend: {calls} fused calls"
        assert_close(out, expected, "taps backend")
        from torch.autograd import forward_ad

        with forward_ad.dual_level():  # a forward-mode derivative wanted, even under no_grad
            tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
            calls, out = span_calls(layer, forward_ad.make_dual(x, tangent))
            assert calls == 0, f"forward AD: {calls} fused calls"
            primal, jvp = forward_ad.unpack_dual(out)
        assert jvp is not None and primal.shape == expected.shape
        assert_close(primal, expected, "forward AD primal")
    calls, _ = span_calls(layer, x)  # grad enabled, parameters requiring grad
    assert calls == 0, f"grad enabled with parameters requiring grad: {calls} fused calls"


def test_layer_calls_what_changes_conv2s_forward():
    """The fused pass reads ``conv2``'s weight and bias and does not call it: a forward hook, a pre-hook
    (``weight_norm``), a subclass forward or a replaced ``conv2`` take the two steps, and give their result."""
    layer, x = make_layer(LAYERS[0])
    with torch.no_grad():
        calls, plain = span_calls(layer, x)
        assert calls == 1, f"plain layer: {calls} fused calls"
        hooked = copy.deepcopy(layer)
        seen = []
        hooked.conv2.conv.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
        calls, out = span_calls(hooked, x)
        assert calls == 0 and len(seen) == 1, f"forward hook: {calls} fused calls, hook called {len(seen)} times"
        assert_close(out, plain, "forward hook")

        class Doubled(torch.nn.Conv2d):
            def forward(self, inputs):
                return 2 * super().forward(inputs)

        doubled = copy.deepcopy(layer)
        conv = doubled.conv2.conv
        doubled.conv2.conv = Doubled(conv.in_channels, conv.out_channels, 1)
        doubled.conv2.conv.load_state_dict(conv.state_dict())
        calls, out = span_calls(doubled, x)
        assert calls == 0, f"Conv2d subclass with its own forward: {calls} fused calls"
        expected = copy.deepcopy(layer)
        expected.fuse_span = False
        expected.conv2.conv.weight.mul_(2)
        expected.conv2.conv.bias.mul_(2)
        assert_close(out, expected(x), "Conv2d subclass with its own forward")
        bare = copy.deepcopy(layer)
        bare.conv2 = bare.conv2.conv  # any module mapping hidden to G*K*K channels
        calls, out = span_calls(bare, x)
        assert calls == 0, f"conv2 replaced by a bare Conv2d: {calls} fused calls"
        assert_close(out, plain, "conv2 replaced by a bare Conv2d")


def test_layer_takes_the_two_steps_under_vmap_and_autocast():
    """``torch.func.vmap`` (layout queries fail on batched tensors) and autocast (the two steps give the autocast
    dtype) never fuse."""
    layer, x = make_layer(LAYERS[0])
    with torch.no_grad():
        looped = torch.stack([layer(sample[None])[0] for sample in x.contiguous()])
        assert_close(torch.func.vmap(lambda sample: layer(sample[None])[0])(x.contiguous()), looped, "vmap")
        linear = models.Involution2d(16, 3, group_channels=4, kernel_gen="linear").eval()
        inputs = torch.randn(1, 16, 9, 9).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            calls, out = span_calls(linear, inputs)
        assert calls == 0 and out.dtype == torch.bfloat16, f"autocast: {calls} fused calls, output {out.dtype}"


def test_layer_with_grad_takes_the_differentiable_path():
    """Grad enabled and x requiring grad: no fused call, and the input and parameter gradients equal the ``taps``
    backend's (the two-step path is the one that differentiates)."""
    layer, x = make_layer(LAYERS[1])
    taps = copy.deepcopy(layer)
    taps.set_backend("taps")
    grad_out = None
    results = {}
    for name, model in (("fast", layer), ("taps", taps)):
        inputs = x.clone().requires_grad_(True)
        calls, out = span_calls(model, inputs)
        assert calls == 0, f"{name}: {calls} fused calls with x requiring grad"
        assert out.requires_grad, f"{name}: output detached from the graph"
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        out.backward(grad_out)
        results[name] = (out.detach(), inputs.grad, {key: p.grad for key, p in model.named_parameters()})
    assert_close(results["fast"][0], results["taps"][0], "output")
    assert_close(results["fast"][1], results["taps"][1], "input gradient")
    for key, grad in results["taps"][2].items():
        assert results["fast"][2][key] is not None, f"no gradient for {key}"
        assert_close(results["fast"][2][key], grad, f"gradient of {key}")
    layer.zero_grad(set_to_none=True)
    for parameter in layer.parameters():
        parameter.requires_grad_(False)
    inputs = x.clone().requires_grad_(True)  # only x requires grad, parameters frozen
    calls, out = span_calls(layer, inputs)
    assert calls == 0 and out.requires_grad, f"{calls} fused calls with x requiring grad (frozen parameters)"
    out.backward(grad_out)
    assert_close(inputs.grad, results["taps"][1], "input gradient, frozen parameters")


# --- 7. RedNet --------------------------------------------------------------------------------------------------
def test_rednet_inference_fuses_every_involution_and_matches_taps():
    fast = randomize_batch_norms(models.RedNet(26, num_classes=10, backend="fast"), seed=3).eval()
    taps = models.RedNet(26, num_classes=10, backend="taps").eval()
    taps.load_state_dict(fast.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    layers = sum(isinstance(module, models.Involution2d) for module in fast.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        calls, got = span_calls(fast, x.contiguous(memory_format=torch.channels_last))
        expected = taps(x)
    assert layers > 0 and calls == layers, f"{calls} fused calls for {layers} involution layers"
    assert_close(got, expected, "RedNet-26 logits, fused fast against taps")


# --- 8. torch.compile -------------------------------------------------------------------------------------------
def test_compiled_layer_keeps_the_fused_op():
    from torch._inductor.utils import run_and_get_code

    layer, x = make_layer(LAYERS[1])
    torch._dynamo.reset()
    with torch.no_grad():
        expected = layer(x)
        got, code = run_and_get_code(torch.compile(layer, fullgraph=True), x)
    assert_close(got, expected, "compiled against eager", 2 ** 10 * torch.finfo(torch.float32).eps)
    assert "involution2d_span" in "\n".join(code), "the compiled graph does not call the fused op"
