"""The numba.cuda backend: kernels v1 and v2 against the NumPy reference under numba's simulator, and on a GPU.

The simulator runs each CUDA thread as a Python thread and raises on any index past an array's end (a
negative index would wrap, as in NumPy, which the value checks catch), so these tiny shapes double as a
bounds check of every kernel, tiles overhanging the image included. ``compile_ptx`` checks that the same
kernels compile for a real GPU. Tests marked ``gpu`` need one: ``INVOLUTION_REAL_GPU=1 pytest -m gpu ...``.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("numba")

from numba import cuda  # noqa: E402

from involution.benchmarks import layers, op_cuda  # noqa: E402
from involution.fast import cuda_kernels, index  # noqa: E402
from involution.fast.index import output_of_input  # noqa: E402
from involution.reference import involution2d, involution2d_backward  # noqa: E402
from involution.reference.loops import involution2d_loops  # noqa: E402
from involution.spec import check_geometry  # noqa: E402

from cases import (ERROR_INPUTS, assert_backward_matches, assert_forward_matches, assert_same_nonfinite,  # noqa: E402
                   LARGE_CASES, backward_loops, case_id, geometry_of, good_args, make_case, make_nonfinite_case)

try:
    from involution.fast import cuda as fast_cuda
except ImportError as error:  # neither a GPU nor the simulator
    fast_cuda, UNAVAILABLE = None, str(error)

needs_cuda = pytest.mark.skipif(fast_cuda is None, reason="numba has no CUDA GPU and the simulator is off")
ON_GPU = fast_cuda is not None and not fast_cuda.is_simulator()
requires_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a real CUDA GPU and INVOLUTION_REAL_GPU=1")

# (B, C, G, H, W, Kh, Kw, stride, padding, dilation), tiny for the simulator: odd sizes, strides 1-3,
# dilations 1-2, padding, rectangular kernels, G = 1 and G = C, blocks larger than the image.
CASES = [
    (1, 4, 1, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 6, 3, 7, 4, 3, 3, (2, 2), (1, 1), (1, 1)),
    (1, 4, 4, 7, 6, 3, 2, (3, 2), (2, 0), (1, 2)),
    (2, 4, 2, 6, 7, 3, 3, (2, 2), (2, 2), (2, 2)),
    (1, 3, 3, 2, 3, 3, 3, (1, 1), (1, 1), (1, 1)),  # input smaller than the kernel
    (1, 2, 1, 7, 7, 1, 1, (3, 3), (0, 0), (1, 1)),  # 1x1 kernel, stride 3
    (2, 8, 2, 5, 3, 2, 3, (1, 3), (1, 2), (2, 1)),  # rectangular, padding wider than the kernel's reach
]
IDS = [case_id(case) for case in CASES]
DTYPES = [np.float32, np.float64]
KINDS = ("forward", "grad_x", "grad_kernel")


def run_kind(kind, x, kernel, grad_out, geometry, **launch):
    """Launch one kernel ``kind`` directly on device copies; return ``(result, version that ran)``."""
    x_dev, kernel_dev, grad_out_dev = (cuda.to_device(array) for array in (x, kernel, grad_out))
    if kind == "forward":
        result, inputs = cuda.device_array(geometry.out_shape, x.dtype), (x_dev, kernel_dev)
    elif kind == "grad_x":
        result, inputs = cuda.device_array(geometry.x_shape, x.dtype), (grad_out_dev, kernel_dev)
    else:
        result, inputs = cuda.device_array(geometry.kernel_shape, x.dtype), (grad_out_dev, x_dev)
    version = getattr(cuda_kernels, kind)(*inputs, result, geometry, **launch)
    return result.copy_to_host(), version


def expected_of(kind, x, kernel, grad_out, stride, padding, dilation):
    """The float64 NumPy reference result of ``kind``."""
    x, kernel, grad_out = (array.astype(np.float64) for array in (x, kernel, grad_out))
    if kind == "forward":
        return involution2d(x, kernel, stride, padding, dilation)
    grad_x, grad_kernel = involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
    return grad_x if kind == "grad_x" else grad_kernel


@needs_cuda
@pytest.mark.parametrize("version", cuda_kernels.VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_version_matches_reference(case, dtype, version):
    x, kernel, grad_out, stride, padding, dilation = make_case(case, dtype)
    context = f"cuda version {version}, {np.dtype(dtype)}, case {case}"
    out = fast_cuda.involution2d(x, kernel, stride, padding, dilation, version=version)
    assert isinstance(out, np.ndarray), f"NumPy in must give NumPy out, got {type(out)}; {context}"
    assert_forward_matches(out, x, kernel, stride, padding, dilation, context)
    grads = fast_cuda.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version)
    assert_backward_matches(grads, grad_out, x, kernel, stride, padding, dilation, context)


# Launches forcing what the default plan does not reach at these sizes: several tiles per image with
# partial tiles at the right and bottom edges, fewer blocks than tiles (each block loops), channel chunks
# with a short last chunk (grad_kernel continuing its sum over passes) and v1's grid-stride loop.
LAUNCHES = {
    "v2 default plan": dict(version=2),
    "v2 4x2 tiles, 1 block": dict(version=2, block=(4, 2), max_blocks=1),
    "v2 3x5 tiles, 3 of 4 channels per pass": dict(version=2, block=(3, 5), max_blocks=5, channels=3),
    "v2 2x2 tiles, 1 channel per pass": dict(version=2, block=(2, 2), channels=1),
    "v1 32 threads, 2 blocks": dict(version=1, threads=32, max_blocks=2),
}
TILE_CASES = [(2, 8, 2, 7, 6, 3, 2, (2, 1), (1, 1), (1, 2)), (1, 4, 1, 6, 7, 3, 3, (1, 1), (1, 1), (1, 1))]


def shrink_shared_memory(monkeypatch, kind, geometry, block, channels):
    """Shrink ``SHARED_BYTES`` so the v2 plan of ``kind`` stages exactly ``channels`` channels per pass."""
    plan = cuda_kernels.plan_tiles(kind, geometry, 8, block)
    monkeypatch.setattr(cuda_kernels, "SHARED_BYTES", plan.shared_bytes // plan.channels * channels)
    plan = cuda_kernels.plan_tiles(kind, geometry, 8, block)
    assert (plan.channels if plan else 0) == channels, f"plan {plan} for {channels} channels per pass"


@needs_cuda
@pytest.mark.parametrize("case", TILE_CASES, ids=["s2x1d1x2", "s1"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_launch_gives_v1s_bits(kind, case, monkeypatch):
    """The answer never depends on the tile plan: every launch equals v1 bit for bit, and the reference."""
    x, kernel, grad_out, stride, padding, dilation = make_case(case, np.float64, seed=3)
    geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
    v1, _ = run_kind(kind, x, kernel, grad_out, geometry, version=1)
    expected = expected_of(kind, x, kernel, grad_out, stride, padding, dilation)
    np.testing.assert_allclose(v1, expected, rtol=0, atol=64 * np.finfo(np.float64).eps * np.abs(expected).max(),
                               err_msg=f"{kind} v1, case {case}")
    for launch_name, launch in LAUNCHES.items():
        launch = dict(launch)
        channels = launch.pop("channels", None)
        with monkeypatch.context() as patch:
            if channels is not None:
                shrink_shared_memory(patch, kind, geometry, launch.get("block"), channels)
            got, version = run_kind(kind, x, kernel, grad_out, geometry, **launch)
        assert version == launch["version"], f"ran v{version}; {launch_name}"
        np.testing.assert_array_equal(got, v1, err_msg=f"{kind}, {launch_name} differs from v1, case {case}")


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_v2_without_room_is_an_error_and_the_policy_picks_v1(kind, monkeypatch):
    x, kernel, grad_out, stride, padding, dilation = make_case(TILE_CASES[0], np.float64, seed=3)
    geometry = check_geometry(x.shape, kernel.shape, stride, padding, dilation)
    assert fast_cuda.choose_version(kind, geometry) == 2
    monkeypatch.setattr(cuda_kernels, "SHARED_BYTES", 8)  # not one staged element fits
    assert cuda_kernels.plan_tiles(kind, geometry, 8) is None
    with pytest.raises(ValueError, match=f"version 2 of {kind} has no tile that fits 8 bytes"):
        run_kind(kind, x, kernel, grad_out, geometry, version=2)
    assert fast_cuda.choose_version(kind, geometry) == 1 and fast_cuda.versions_for(geometry)[kind] == 1
    if kind == "forward":
        got = fast_cuda.involution2d(x, kernel, stride, padding, dilation)
    else:
        grads = fast_cuda.involution2d_backward(grad_out, x, kernel, stride, padding, dilation)
        got = grads[KINDS.index(kind) - 1]
    np.testing.assert_array_equal(got, run_kind(kind, x, kernel, grad_out, geometry, version=1)[0])


CUDA_POLICY = [  # (what, case, version of every kind)
    ("RedNet-like 14x14 K7", (1, 32, 2, 14, 14, 7, 7, (1, 1), (3, 3), (1, 1)), 2),
    ("stride 3000", LARGE_CASES[0], 2),
    ("dilation 100000: no tile fits", LARGE_CASES[1], 1),
]


@needs_cuda
@pytest.mark.parametrize("what, case, version", CUDA_POLICY, ids=[p[0] for p in CUDA_POLICY])
def test_version_policy(what, case, version):
    geometry = geometry_of(case)
    assert fast_cuda.versions_for(geometry) == dict.fromkeys(KINDS, version), what


@needs_cuda
@pytest.mark.parametrize("case", LARGE_CASES[:3], ids=case_id)
def test_large_hyper_parameters_match_the_definition(case):
    """Stride 3000, dilation 100000 and padding 10**6 (tiny outputs): the policy's versions equal the loops."""
    x, kernel, grad_out, stride, padding, dilation = make_case(case)
    context = f"case {case}, versions {fast_cuda.versions_for(geometry_of(case))}"
    got = (fast_cuda.involution2d(x, kernel, stride, padding, dilation),
           *fast_cuda.involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
    expected = (involution2d_loops(x, kernel, stride, padding, dilation),
                *backward_loops(grad_out, x, kernel, stride, padding, dilation))
    for name, a, b in zip(KINDS, got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name}, {context}")


@needs_cuda
@pytest.mark.parametrize("version", cuda_kernels.VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
# inf * 0 in the simulator's NumPy scalars, on its own threads (np.errstate is per thread)
@pytest.mark.filterwarnings("ignore:invalid value encountered in scalar multiply:RuntimeWarning")
def test_every_version_gives_the_definitions_nan_and_inf(dtype, version):
    x, kernel, grad_out, stride, padding, dilation = make_nonfinite_case(dtype)
    with np.errstate(invalid="ignore"):  # inf * 0 in the reference
        expected = (involution2d(x, kernel, stride, padding, dilation),
                    *involution2d_backward(grad_out, x, kernel, stride, padding, dilation))
    got = (fast_cuda.involution2d(x, kernel, stride, padding, dilation, version=version),
           *fast_cuda.involution2d_backward(grad_out, x, kernel, stride, padding, dilation, version=version))
    for name, a, b in zip(KINDS, got, expected):
        assert_same_nonfinite(a, b, f"cuda {name}, version {version}, {np.dtype(dtype)}")


@given(kernel_len=st.integers(1, 7), stride=st.integers(1, 4), dilation=st.integers(1, 3),
       padding=st.integers(0, 6), tile=st.integers(1, 33), tile_index=st.integers(0, 3))
def test_staged_tiles_hold_every_tap(kernel_len, stride, dilation, padding, tile, tile_index):
    """The shared-memory offsets of v2 stay inside the staged tile for every thread and tap (any GPU size)."""
    start = tile_index * tile
    in_extent = index.input_tile_extent(tile, kernel_len, stride, dilation)
    origin = start * stride - padding
    for thread in range(tile):  # forward / grad_kernel: output start + thread reads input origin + offset
        for tap in range(kernel_len):
            offset = (start + thread) * stride + tap * dilation - padding - origin
            assert 0 <= offset < in_extent, f"input offset {offset} outside [0, {in_extent}), thread {thread}"
    out_extent = index.output_tile_extent(tile, kernel_len, stride, dilation)
    first = index.first_output_reaching(start, kernel_len, stride, dilation, padding)
    for thread in range(tile):  # grad_x: input start + thread is read by outputs first + offset
        for tap in range(kernel_len):
            out_index = output_of_input(start + thread, tap, stride, dilation, padding, 10**9)
            if out_index >= 0:
                assert 0 <= out_index - first < out_extent, (
                    f"output offset {out_index - first} outside [0, {out_extent}), input {start + thread}")


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_rednet_layers_get_a_tiled_plan_within_shared_memory(kind, itemsize):
    for layer in layers.REDNET_LAYERS:
        geometry = layers.layer_geometry(layer, batch=32)
        plan = cuda_kernels.plan_tiles(kind, geometry, itemsize)
        assert plan is not None, f"{kind} of {layer} would fall back to v1"
        assert plan.shared_bytes <= cuda_kernels.SHARED_BYTES and plan.tile_w * plan.tile_h <= 256, plan
        assert 1 <= plan.channels <= min(cuda_kernels.MAX_CHANNELS, geometry.group_channels), plan


@needs_cuda
def test_device_arrays_stay_on_the_device_and_match_the_host_path():
    x, kernel, grad_out, stride, padding, dilation = make_case(CASES[1], np.float32)
    stream = cuda.stream()
    on_device = [cuda.to_device(array) for array in (x, kernel, grad_out)]
    out = fast_cuda.involution2d(*on_device[:2], stride, padding, dilation, stream=stream)
    grads = fast_cuda.involution2d_backward(on_device[2], *on_device[:2], stride, padding, dilation, stream=stream)
    stream.synchronize()
    for result in (out, *grads):
        assert fast_cuda.is_device_array(result) and not isinstance(result, np.ndarray), type(result)
    np.testing.assert_array_equal(out.copy_to_host(), fast_cuda.involution2d(x, kernel, stride, padding, dilation))
    for got, expected in zip(grads, fast_cuda.involution2d_backward(grad_out, x, kernel, stride, padding, dilation)):
        np.testing.assert_array_equal(got.copy_to_host(), expected)


@needs_cuda
def test_non_contiguous_numpy_inputs_are_copied_contiguous():
    x, kernel, _, stride, padding, dilation = make_case(CASES[3], np.float64)
    x_strided = np.asfortranarray(x)
    kernel_strided = np.repeat(kernel, 2, axis=-1)[..., ::2]
    assert not x_strided.flags.c_contiguous and not kernel_strided.flags.c_contiguous
    np.testing.assert_array_equal(fast_cuda.involution2d(x_strided, kernel_strided, stride, padding, dilation),
                                  fast_cuda.involution2d(x, kernel, stride, padding, dilation))


DEVICE_ERRORS = [
    # (description, make(x_dev, kernel_dev, x, kernel) -> (x, kernel), error, text)
    ("strided device x", lambda xd, kd, x, k: (xd[:, :, :, ::2], kd), ValueError, "x must be C-contiguous"),
    ("host kernel with device x", lambda xd, kd, x, k: (xd, k), TypeError,
     "x, kernel must be all NumPy arrays or all CUDA device arrays, got x on the device, kernel on the host"),
    ("int device kernel", lambda xd, kd, x, k: (xd, cuda.to_device(k.astype(np.int32))), TypeError,
     "kernel must have dtype float32 or float64, got int32"),
    ("5-D device x", lambda xd, kd, x, k: (cuda.to_device(x[None]), kd), ValueError, "x must be 4-D"),
]


@needs_cuda
@pytest.mark.parametrize("description, make, error, text", DEVICE_ERRORS, ids=[e[0] for e in DEVICE_ERRORS])
def test_bad_device_input_raises_named_error(description, make, error, text):
    x, kernel, stride, padding, dilation = good_args()
    bad_x, bad_kernel = make(cuda.to_device(x), cuda.to_device(kernel), x, kernel)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        fast_cuda.involution2d(bad_x, bad_kernel, stride, padding, dilation)


@needs_cuda
@pytest.mark.parametrize("description, mutate, error, text", ERROR_INPUTS, ids=[e[0] for e in ERROR_INPUTS])
def test_bad_input_raises_the_reference_error(description, mutate, error, text):
    x, kernel, stride, padding, dilation = good_args()
    args = dict(x=x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    mutate(args)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        fast_cuda.involution2d(**args)


@needs_cuda
def test_bad_version_and_grad_out_raise_named_errors():
    x, kernel, stride, padding, dilation = good_args()
    with pytest.raises(ValueError, match=r"version must be one of \(1, 2\) or None, got 3"):
        fast_cuda.involution2d(x, kernel, stride, padding, dilation, version=3)
    with pytest.raises(ValueError, match="grad_out must have the output shape"):
        fast_cuda.involution2d_backward(np.zeros((2, 4, 5, 5)), x, kernel, stride, padding, dilation)


@needs_cuda
@pytest.mark.skipif(ON_GPU, reason="checks the refusal on the simulator")
def test_benchmark_refuses_the_simulator(capsys):
    assert op_cuda.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA GPU is available" in err and "simulator" in err, err


def test_torch_anchors_time_the_backward_alone():
    """The CUDA benchmark's torch backward is autograd's backward of one recorded forward (as the CPU benchmark's),
    repeatable, with the fresh forward's gradients; torch's logic, so CPU tensors stand in for CUDA ones."""
    torch = pytest.importorskip("torch")

    from involution.conformance import oracle

    geometry = layers.layer_geometry(layers.REDNET_LAYERS[7], 1)
    x, kernel, grad_out = (torch.from_numpy(a) for a in layers.random_inputs(geometry, "float32"))
    forwards = []

    def counted(*args):
        forwards.append(1)
        return oracle.involution2d(*args)

    _, backward = op_cuda._torch_involution(geometry, counted)
    fresh = backward(x, kernel, grad_out)
    call = backward(x, kernel, grad_out, recorded=True)
    recorded_forwards = len(forwards)
    for _ in range(2):
        again = call()
        assert all(torch.equal(a, b) for a, b in zip(fresh, again)), "the recorded backward's gradients differ"
    assert len(forwards) == recorded_forwards == 2, f"{len(forwards)} forwards for 2 recordings and 2 timed calls"


def test_bench_command_passes_dtype_and_plan_to_the_cuda_benchmark(capsys):
    from involution.cli import main

    assert main(["bench", "--backend", "fast-cuda", "--plan", "--dtype", "float64", "--batch", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == op_cuda.plans([2], 8), printed
    assert printed != op_cuda.plans([2], 4), "float64 and float32 plans should differ in shared bytes"
    assert main(["bench", "--plan"]) == 2
    assert "--dtype and --plan are for --backend fast-cuda" in capsys.readouterr().err


def run_without_simulator(code: str) -> dict:
    """Run ``code`` (which prints one JSON line) in a fresh Python with numba's simulator off."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"subprocess failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_a_gpu_import_and_benchmark_fail_cleanly():
    report = run_without_simulator("""
        import contextlib, io, json
        from numba import cuda
        report = {"gpu": cuda.is_available()}
        try:
            import involution.fast.cuda
        except ImportError as error:
            report["import_error"] = str(error)
        from involution.benchmarks import op_cuda
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            report["bench_rc"] = op_cuda.main(["--batch", "1"]) if not report["gpu"] else None
        report["bench_err"] = stderr.getvalue()
        print(json.dumps(report))
    """)
    if report["gpu"]:
        pytest.skip("a CUDA GPU is present")
    assert "needs a CUDA GPU" in report.get("import_error", ""), report
    assert report["bench_rc"] == 2 and report["bench_err"].count("\n") == 1, report
    assert "no CUDA GPU is available" in report["bench_err"], report


def test_kernels_compile_to_ptx_for_a_real_gpu():
    """Every kernel type-checks and compiles for sm_90 (NVVM only, no GPU): accumulators in registers, and
    float32 kernels free of float64 arithmetic (1/64 speed on most GPUs)."""
    report = run_without_simulator("""
        import json, re
        import numpy as np
        from numba import cuda
        try:
            cuda.compile_ptx(lambda a: None, "(float32[::1],)", cc=(9, 0))
        except Exception as error:
            print(json.dumps({"skip": f"{type(error).__name__}: {error}"[:300]}))
            raise SystemExit
        from involution.fast.cuda_kernels import compile_ptx
        report = {}
        for dtype in ("float32", "float64"):
            for name, ptx in compile_ptx(dtype).items():
                report[f"{dtype} {name}"] = {"local": ptx.count(".local"), "f64": len(re.findall(r"\\.f64", ptx)),
                                             "entry": ".entry" in ptx}
        print(json.dumps(report))
    """)
    if "skip" in report:
        pytest.skip(f"NVVM/NVRTC not installed (pip install nvidia-nvvm nvidia-cuda-nvrtc): {report['skip']}")
    assert len(report) == 2 * len(KINDS) * len(cuda_kernels.VERSIONS), report
    for name, facts in report.items():
        assert facts["entry"] and facts["local"] == 0, f"{name}: {facts}"
        if name.startswith("float32"):
            assert facts["f64"] == 0, f"{name} has float64 instructions: {facts}"


# ------------------------------------------------------------------------------------------- real GPU only
@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("layer", [0, 2, 7], ids=lambda index: layers.layer_name(layers.REDNET_LAYERS[index]))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("version", cuda_kernels.VERSIONS)
def test_gpu_rednet_layers_match_reference(layer, dtype, version):
    geometry = layers.layer_geometry(layers.REDNET_LAYERS[layer], batch=2)
    x, kernel, grad_out = layers.random_inputs(geometry, dtype, seed=layer)
    args = (geometry.stride, geometry.padding, geometry.dilation)
    context = f"cuda version {version}, {np.dtype(dtype)}, RedNet layer {layers.REDNET_LAYERS[layer]}"
    out = fast_cuda.involution2d(x, kernel, *args, version=version)
    assert_forward_matches(out, x, kernel, *args, context)
    grads = fast_cuda.involution2d_backward(grad_out, x, kernel, *args, version=version)
    assert_backward_matches(grads, grad_out, x, kernel, *args, context)


@pytest.mark.gpu
@requires_gpu
def test_gpu_results_are_bitwise_reproducible():
    geometry = layers.layer_geometry(layers.REDNET_LAYERS[1], batch=4)
    x, kernel, grad_out = (cuda.to_device(array) for array in layers.random_inputs(geometry, np.float32, seed=1))
    args = (geometry.stride, geometry.padding, geometry.dilation)
    first = [fast_cuda.involution2d(x, kernel, *args), *fast_cuda.involution2d_backward(grad_out, x, kernel, *args)]
    second = [fast_cuda.involution2d(x, kernel, *args), *fast_cuda.involution2d_backward(grad_out, x, kernel, *args)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())


@pytest.mark.gpu
@requires_gpu
def test_gpu_torch_cuda_tensors_go_in_without_a_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    from involution.conformance.oracle import involution2d as oracle_involution2d

    geometry = layers.layer_geometry(layers.REDNET_LAYERS[3], batch=2)
    x, kernel, _ = (torch.from_numpy(a).cuda() for a in layers.random_inputs(geometry, np.float64, seed=2))
    args = (geometry.stride, geometry.padding, geometry.dilation)
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    out = torch.as_tensor(fast_cuda.involution2d(x, kernel, *args, stream=stream), device="cuda")
    torch.testing.assert_close(out, oracle_involution2d(x, kernel, *args), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fast_cuda.involution2d(x.transpose(2, 3), kernel, *args)


@pytest.mark.gpu
@pytest.mark.slow
@requires_gpu
def test_gpu_tensors_past_two_to_the_31_elements():
    """x of 2**31 + 2**20 float32 elements (8 GiB): the last rows, beyond int32 offsets, are computed right."""
    batch, channels, height, width = 1, 16, 2**15 + 2**4, 2**12
    last_rows = np.arange(channels * 4 * width, dtype=np.float32).reshape(1, channels, 4, width)
    x_host = np.zeros((batch, channels, height, width), np.float32)
    x_host[:, :, -4:] = last_rows
    kernel_host = np.zeros((batch, 1, 1, 1, height, width), np.float32)
    kernel_host[..., -4:, :] = 2.0
    x, kernel = cuda.to_device(x_host), cuda.to_device(kernel_host)
    del x_host, kernel_host
    for version in cuda_kernels.VERSIONS:
        out = fast_cuda.involution2d(x, kernel, version=version)
        np.testing.assert_array_equal(out[:, :, -4:].copy_to_host(), 2 * last_rows, err_msg=f"version {version}")
        np.testing.assert_array_equal(out[:, :, :4].copy_to_host(), 0, err_msg=f"version {version}")
