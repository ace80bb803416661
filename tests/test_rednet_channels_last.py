"""RedNet's speed paths (issue 31) compute what they replace: the channels-last forward kernel
(``involution.fast.cpu_forward_channels_last``) and the torch op's channels-last path, RedNet in ``channels_last``
against the plain-PyTorch ``taps`` op, and the benchmark's floor networks and in-place ReLUs.

Tolerances derive from the dtype: ``2**10`` epsilons relative to the largest magnitude (as tests/test_network_speed.py),
far below what a wrong tap, channel or group gives. The channels-last kernel sums each output in the order of the
channel-vector kernels (u, then v, from zero, fused multiply-adds), so it is compared with forward v8 bitwise.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from involution.benchmarks import networks  # noqa: E402
from involution.fast import cpu, cpu_forward_channels_last  # noqa: E402
from involution.spec import check_involution2d  # noqa: E402
from involution.torch import models, ops  # noqa: E402

from test_network_speed import assert_close, randomize_batch_norms  # noqa: E402

# (B, C, G, H, W, K, stride, padding, dilation): RedNet's 7x7 layer shapes shrunk, stride 2 (odd and even sizes),
# dilation, no padding, groups of 2, 5 and 24 channels (masked vectors), the wide-kernel edge (K > W); rows wide
# enough for blocks of four columns with every tap inside (the kernel's unchecked path) at stride 1 and 2, dilation 2
CASES = [(2, 32, 2, 9, 12, 7, 1, 3, 1), (2, 32, 2, 11, 10, 7, 2, 3, 1), (1, 48, 3, 12, 12, 3, 1, 2, 2),
         (1, 32, 2, 9, 30, 3, 1, 0, 1), (2, 6, 3, 7, 5, 3, 2, 1, 1), (1, 10, 2, 5, 6, 3, 1, 1, 1),
         (1, 48, 2, 6, 7, 3, 1, 1, 1), (1, 16, 1, 3, 4, 7, 1, 3, 1), (2, 32, 2, 9, 30, 3, 2, 1, 1),
         (2, 64, 4, 11, 40, 3, 2, 2, 2), (2, 32, 2, 13, 27, 7, 1, 3, 1), (2, 40, 2, 9, 23, 3, 1, 1, 1)]


def channels_last_arrays(case, dtype, seed=0):
    batch, channels, groups, height, width, size, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    out_h = (height + 2 * padding - dilation * (size - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (size - 1) - 1) // stride + 1
    x = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    kernel = rng.standard_normal((batch, groups, size, size, out_h, out_w)).astype(dtype)
    return x, kernel, (stride, padding, dilation)


def run_channels_last(x, kernel, hyper_parameters):
    """The channels-last kernel on ``x`` (B, C, H, W) and ``kernel`` (B, G, Kh, Kw, Ho, Wo), result (B, C, Ho, Wo)."""
    _, _, geometry = check_involution2d(x, kernel, *hyper_parameters)
    out = np.full(cpu_forward_channels_last.shapes(geometry)[2], np.nan, x.dtype)  # every element must be written
    cpu_forward_channels_last.run((np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                                   np.ascontiguousarray(kernel.transpose(0, 4, 5, 1, 2, 3)), out), geometry)
    return out.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_channels_last_kernel_is_the_definition(case, dtype):
    x, kernel, hyper_parameters = channels_last_arrays(case, dtype)
    got = run_channels_last(x, kernel, hyper_parameters)
    _, _, geometry = check_involution2d(x, kernel, *hyper_parameters)
    if cpu.channel_vectors_fit(geometry):  # v8 sums in the same order: equal to the last bit
        expected = cpu.involution2d(x, kernel, *hyper_parameters, version=8)
        mismatch = np.argwhere(got != expected)
        assert mismatch.size == 0, f"{case}: {len(mismatch)} elements differ from v8, first {mismatch[0]}"
    else:
        expected = cpu.involution2d(x, kernel, *hyper_parameters, version=1)
        assert_close(torch.from_numpy(got), torch.from_numpy(expected), f"{case}", 2 ** 10 * np.finfo(dtype).eps)


def test_channels_last_kernel_multiplies_the_padding():
    """An infinite weight on a tap that reads the zero padding gives NaN there (the definition), nowhere else."""
    x, kernel, hyper_parameters = channels_last_arrays(CASES[0], np.float32)
    kernel[0, 1, 0, 0, 0, 0] = np.inf  # tap (0, 0) of output (0, 0) reads row -3: padding
    got = run_channels_last(x, kernel, hyper_parameters)
    group_channels = x.shape[1] // kernel.shape[1]
    assert np.isnan(got[0, group_channels:2 * group_channels, 0, 0]).all()
    assert np.isfinite(np.delete(got[0, :, 0, 0], np.s_[group_channels:2 * group_channels])).all()
    assert np.isfinite(got[:, :, 1:]).all() and np.isfinite(got[1]).all()


def test_channels_last_kernel_rejects_arrays_that_do_not_match():
    x, kernel, hyper_parameters = channels_last_arrays(CASES[0], np.float32)
    _, _, geometry = check_involution2d(x, kernel, *hyper_parameters)
    x_last, kernel_last = x.transpose(0, 2, 3, 1), np.ascontiguousarray(kernel.transpose(0, 4, 5, 1, 2, 3))
    out = np.empty(cpu_forward_channels_last.shapes(geometry)[2], np.float32)
    with pytest.raises(ValueError, match=r"arrays\[0\] of the channels-last forward must be a C-contiguous"):
        cpu_forward_channels_last.run((x_last, kernel_last, out), geometry)  # a transposed view, not C order
    with pytest.raises(ValueError, match=r"arrays\[1\] .* shape \(2, 9, 12, 2, 7, 7\)"):
        cpu_forward_channels_last.run((np.ascontiguousarray(x_last), kernel, out), geometry)  # (B, G, ...) order
    with pytest.raises(ValueError, match=r"arrays\[0\] .* the result's dtype \(float64\)"):
        cpu_forward_channels_last.run((np.ascontiguousarray(x_last), kernel_last, out.astype(np.float64)), geometry)
    with pytest.raises(ValueError, match="must be three ndarrays"):
        cpu_forward_channels_last.run((out,), geometry)


# --- the torch op in channels_last -----------------------------------------------------------------------------
def channels_last_tensors(case, dtype=torch.float32, seed=0):
    """``x`` channels_last and a position-major kernel (``conv2``'s channels_last output viewed 6-D)."""
    x, kernel, hyper_parameters = channels_last_arrays(case, np.float32, seed)
    x = torch.from_numpy(x).to(dtype).contiguous(memory_format=torch.channels_last)
    batch, groups, kh, kw, out_h, out_w = kernel.shape
    weight = torch.from_numpy(kernel).to(dtype).reshape(batch, groups * kh * kw, out_h, out_w)
    kernel = weight.contiguous(memory_format=torch.channels_last).view(batch, groups, kh, kw, out_h, out_w)
    return x, kernel, hyper_parameters


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_op_runs_channels_last_without_copies_and_returns_channels_last(case, dtype):
    x, kernel, hyper_parameters = channels_last_tensors(case, dtype)
    assert ops.channels_last_forward(x, kernel)
    got = ops.involution2d(x, kernel, *hyper_parameters)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous(), got.stride()
    expected = ops.involution2d(x.contiguous(), kernel.contiguous(), *hyper_parameters)  # the contiguous path
    assert expected.is_contiguous()
    if dtype == torch.bfloat16:  # both computed in float32 and rounded once
        assert torch.equal(got, expected)
    else:
        assert_close(got, expected, f"{case} {dtype}", 2 ** 10 * torch.finfo(dtype).eps)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:  # what torch.compile and torch.export see
        fake = ops.involution2d(mode.from_tensor(x), mode.from_tensor(kernel), *hyper_parameters)
    assert fake.stride() == got.stride() and fake.shape == got.shape


def test_op_fake_gives_the_strides_of_the_real_kernel():
    """torch.library.opcheck (schema, autograd registration, fake tensor, AOT dispatch) on channels-last inputs,
    position-major kernels and the mixed layouts that take the contiguous path."""
    x, kernel, hyper_parameters = channels_last_tensors(CASES[1])
    hyper_parameters = [[value, value] for value in hyper_parameters]
    for inputs in ((x, kernel), (x, kernel.contiguous()), (x.contiguous(), kernel)):
        torch.library.opcheck(ops.involution2d_op, (*inputs, *hyper_parameters))
        torch.library.opcheck(ops.involution2d_op, (inputs[0].clone().requires_grad_(),
                                                    inputs[1].clone().requires_grad_(), *hyper_parameters))


def test_op_takes_the_contiguous_path_for_other_layouts():
    x, kernel, hyper_parameters = channels_last_tensors(CASES[0])
    assert not ops.channels_last_forward(x, kernel.contiguous())  # a (B, G, Kh, Kw, Ho, Wo)-major kernel
    assert not ops.channels_last_forward(x.contiguous(), kernel)
    out = ops.involution2d(x, kernel.contiguous(), *hyper_parameters)
    assert out.is_contiguous()
    assert_close(out, ops.involution2d(x, kernel, *hyper_parameters), "mixed layouts")


# --- RedNet ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_rednet_channels_last_matches_taps(training):
    """RedNet-26 in channels_last with the fast op (the channels-last forward; contiguous backward) against the
    taps op in contiguous format: logits, and in eval mode the input and parameter gradients (train mode's BN
    backward amplifies float32 rounding about 1e5-fold for either op: tests/test_network_speed.py)."""
    fast = randomize_batch_norms(models.RedNet(26, num_classes=10, backend="fast"), seed=3)
    taps = models.RedNet(26, num_classes=10, backend="taps")
    taps.load_state_dict(fast.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 40, 36, generator=generator)
    grad_out = torch.randn(2, 10, generator=generator)
    calls = []
    original = ops._cpu_call

    def spy(name, tensors, geometry):
        calls.append((name, ops.channels_last_forward(*tensors) if name == "involution2d" else None))
        return original(name, tensors, geometry)

    results = {}
    for name, model, layout in (("fast", fast, torch.channels_last), ("taps", taps, torch.contiguous_format)):
        inputs = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        ops._cpu_call = spy
        try:
            out = model.train(training)(inputs)
            out.backward(grad_out)
        finally:
            ops._cpu_call = original
        results[name] = (out.detach(), inputs.grad, {key: p.grad for key, p in model.named_parameters()})
    forwards = [layout for name, layout in calls if name == "involution2d"]
    assert forwards and all(forwards), f"forwards not on the channels-last path: {forwards}"
    assert_close(results["fast"][0], results["taps"][0], "logits")
    if training:
        return
    assert_close(results["fast"][1], results["taps"][1], "input gradient")
    for key, grad in results["taps"][2].items():
        assert_close(results["fast"][2][key], grad, f"gradient of {key}")


# --- the benchmark's floors and in-place ReLUs ---------------------------------------------------------------
def test_floor_networks_keep_the_shared_layers_and_the_output_shape():
    rednet = models.RedNet(26, num_classes=10).eval()
    x = torch.randn(2, 3, 36, 40)
    for floor, resnet_stem in networks.FLOORS:
        network = networks.floor_network(rednet, resnet_stem)
        assert not any(isinstance(module, models.Involution2d) for module in network.modules()), floor
        kept = network.state_dict()
        replaced = tuple(f"{name}." for name, module in rednet.named_modules()
                         if isinstance(module, models.Involution2d)) + (("backbone.stem.",) if resnet_stem else ())
        shared = {key: value for key, value in rednet.state_dict().items() if not key.startswith(replaced)}
        assert len(shared) > len(rednet.state_dict()) / 2
        for key, value in shared.items():
            assert torch.equal(kept[key], value), f"{floor}: {key} changed"
        with torch.no_grad():
            assert network(x).shape == (2, 10)
            features = network.backbone.stem(x)
        assert features.shape == rednet.backbone.stem(x).shape, floor
        assert resnet_stem == any(module.kernel_size == (7, 7) for module in network.modules()
                                  if isinstance(module, torch.nn.Conv2d)), floor
    assert any(isinstance(module, models.Involution2d) for module in rednet.modules())  # left as it was
    labels = list(networks.timed_networks(["rednet26", "resnet50"]))
    assert labels == ["rednet26", "rednet26/floor", "rednet26/floor+stem", "resnet50"]


def test_free_stand_in_has_the_involution_output_shape():
    for stride, shape in (((1, 1), (2, 8, 7, 9)), ((2, 2), (2, 8, 7, 9)), ((2, 2), (1, 8, 6, 6))):
        layer = models.Involution2d(8, 3, stride, group_channels=4, backend="taps")
        x = torch.randn(shape)
        assert networks._free_involution(stride)(x).shape == layer(x).shape


def test_floor_ratios_are_printed_beside_the_ratios():
    def row(network, median):
        return {"network": network, "mode": "eager", "configuration": "contiguous", "op_threads": "torch",
                "batch": 1, "median_ms": median}

    result = networks.ratios([row("rednet50", 80.0), row("rednet50/floor", 50.0), row("resnet50", 100.0)])
    by_name = {entry["network"]: entry for entry in result}
    assert by_name["rednet50/floor"]["ratio"] == pytest.approx(0.5)
    assert by_name["rednet50/floor"]["flops_ratio"] is None and by_name["rednet50/floor"]["target"] is None
    table = networks.format_ratios(result)
    assert "rednet50/floor             eager     1       0.50" in table, table
    assert "the floor: involution layers free" in table


def test_relu_in_place_keeps_the_function():
    for model in (models.RedNet(26, num_classes=10), models.ResNet(26, num_classes=10)):
        model = randomize_batch_norms(model, seed=6).eval()
        folded = models.fold_batch_norms(model)
        in_place = networks.relu_in_place(models.fold_batch_norms(model))
        assert all(module.inplace for module in in_place.modules() if isinstance(module, torch.nn.ReLU))
        x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            assert torch.equal(in_place(x), folded(x)), type(model).__name__


def test_networks_command_sets_threads_on_the_project_layer(monkeypatch):
    """``python -m involution.benchmarks.networks --threads N`` chooses numba's threading layer
    (``involution.fast.runtime``: TBB, else workqueue) before it sets numba's threads: set first, numba starts its
    OpenMP layer beside torch's OpenMP threads, not the layer the op is built and documented for."""
    import subprocess
    import sys

    for name in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"):
        monkeypatch.delenv(name, raising=False)
    script = ("from involution.benchmarks import networks\n"
              "networks.run = lambda *args, **kwargs: {}\n"
              "networks.main(['--threads', '1', '--no-compile'])\n"
              "from involution.fast import runtime\n"
              "print(runtime.running_layer())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] in ("tbb", "workqueue"), result.stdout


def convolution_kernels(module, x) -> set:
    """The ATen convolution kernels ``module(x)`` runs (``torch.profiler`` event names)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        module(x)
    return {event.key for event in profiler.key_averages()
            if event.key in ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward")}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_onednn_convolutions_take_onednn_with_the_same_function(memory_format):
    """On one thread torch sends a 1x1 stride-1 convolution at batch 8 to its im2col + GEMM path; the oneDNN
    configuration runs oneDNN's kernel instead, with the same outputs and gradients (float32 rounding)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(3)
        plain = torch.nn.Conv2d(16, 24, 1, bias=True)
        model = models.onednn_convolutions(torch.nn.Sequential(copy.deepcopy(plain), torch.nn.ReLU()))
        assert type(model[0]) is models.OneDNNConv2d and not isinstance(model[1], torch.nn.Conv2d)
        x = torch.randn(8, 16, 9, 7, generator=generator).contiguous(memory_format=memory_format)
        assert convolution_kernels(plain, x) == {"aten::_slow_conv2d_forward"}  # what the option changes
        assert convolution_kernels(model[0], x) == {"aten::mkldnn_convolution"}
        for module in (plain, model[0]):
            module.zero_grad()
        inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outputs = [plain(inputs[0]), model[0](inputs[1])]
        tolerance = 2 ** 10 * torch.finfo(torch.float32).eps
        assert_close(outputs[1], outputs[0], "output", tolerance)
        grad = torch.randn(outputs[0].shape, generator=generator)
        for output in outputs:
            output.backward(grad)
        assert_close(inputs[1].grad, inputs[0].grad, "grad_x", tolerance)
        assert_close(model[0].weight.grad, plain.weight.grad, "grad_weight", tolerance)
        assert_close(model[0].bias.grad, plain.bias.grad, "grad_bias", tolerance)
        plain64, model64, x64 = copy.deepcopy(plain).double(), copy.deepcopy(model[0]).double(), x.double()
        assert convolution_kernels(model64, x64) == convolution_kernels(plain64, x64)  # float64: nn.Conv2d's path
        with torch.no_grad():
            assert torch.equal(model64(x64), plain64(x64))
    finally:
        torch.set_num_threads(previous)


def test_onednn_convolutions_reject_what_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        models.onednn_convolutions([torch.nn.Conv2d(1, 1, 1)])


def test_onednn_convolutions_compile_to_the_same_function():
    """torch.compile cannot trace oneDNN's op (no fake-tensor kernel): the converted module compiles through
    ``nn.Conv2d``'s forward and gives the plain module's values."""
    plain = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1), torch.nn.ReLU(), torch.nn.Conv2d(6, 3, 3, padding=1))
    converted = models.onednn_convolutions(copy.deepcopy(plain))
    x = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close(torch.compile(converted, fullgraph=True, backend="eager")(x), plain(x), "compiled",
                     2 ** 10 * torch.finfo(torch.float32).eps)


def test_compiled_configuration_freezes_the_network():
    """The benchmark's compiled inference runs with inductor's freezing: BN folded, convolution weights prepacked
    for oneDNN. ``torch.compile(options={"freezing": True})`` alone froze nothing (the generated code called
    ``extern_kernels.convolution`` with the weights as inputs); :func:`networks.frozen` must give packed kernels."""
    from torch._inductor.utils import run_and_get_code

    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3, padding=1)).eval()
    x = torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(5))
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(x)
        forward = networks.frozen(torch.compile(copy.deepcopy(model), fullgraph=True))
        got, code = run_and_get_code(forward, x)
    assert_close(got, expected, "frozen compiled forward", 2 ** 10 * torch.finfo(torch.float32).eps)
    assert "mkldnn._convolution_pointwise" in "\n".join(code), "no prepacked convolution: freezing did not apply"
