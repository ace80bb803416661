"""The network speed options and their benchmark (issue 31): BN folding keeps each network's function, RedNet with
the fast op equals RedNet with the plain-PyTorch ``taps`` op in float32 (outputs and gradients), and the benchmark's
bookkeeping (interleaving, best configuration, ratios, saved-for-backward size, op categories) is right.

Tolerances derive from the dtype: through a few dozen layers (sums of up to a few thousand products each), relative
to the largest magnitude of the compared tensor, ``2**10`` epsilons of the dtype (1.2e-4 in float32, 2.3e-13 in
float64) is far above rounding and far below what a wrong tap, channel or folded statistic gives (1e-2 or more).
"""
import pytest

torch = pytest.importorskip("torch")
models = pytest.importorskip("involution.torch.models")
pytest.importorskip("numba")

from involution.benchmarks import networks  # noqa: E402

RTOL = 2 ** 10 * torch.finfo(torch.float32).eps
TRAINING_AMPLIFICATION = 2 ** 20  # rounding growth through train-mode BN backwards (measured ~1e5, see below)
SMALL = dict(stage_blocks=(1, 1, 1, 1), num_classes=5, stem_channels=8, base_channels=4, kernel_size=3,
             group_channels=2, reduction=2)


def assert_close(got, expected, what, rtol=RTOL):
    """``max|got - expected| <= rtol * max|expected|``, reporting the worst element."""
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    error = (got - expected).abs()
    scale = float(expected.abs().max())
    worst = int(error.argmax())
    assert float(error.max()) <= rtol * scale, (
        f"{what}: max error {float(error.max()):.3e} > {rtol:.2e} * max|expected| {scale:.3e} at flat index "
        f"{worst}: got {float(got.flatten()[worst])!r}, expected {float(expected.flatten()[worst])!r}")


def randomize_batch_norms(model, seed):
    """Random BN affine parameters and running statistics, so that folding them is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, (low, high) in ((module.weight, (0.5, 1.5)), (module.bias, (-0.3, 0.3)),
                                            (module.running_mean, (-0.3, 0.3)), (module.running_var, (0.5, 1.5))):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model


# --- fold_batch_norms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["rednet", "resnet"])
def test_fold_batch_norms_keeps_the_function_and_leaves_the_model(family):
    model = (models.RedNet(**SMALL) if family == "rednet" else
             models.ResNet(stage_blocks=(1, 1, 1, 1), num_classes=5, stem_channels=8, base_channels=4))
    model = randomize_batch_norms(model, seed=1).eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    folded = models.fold_batch_norms(model)
    x = torch.randn(2, 3, 29, 31, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(folded(x), model(x), f"{family} logits after folding")
    kept = sum(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    # RedNet keeps the BN after each involution (the stem's and each bottleneck's bn2); ResNet keeps none
    blocks = sum(isinstance(module, models.Bottleneck) for module in model.modules())
    assert kept == (blocks + 1 if family == "rednet" else 0), f"{kept} BatchNorm2d left after folding"
    assert not folded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"fold_batch_norms changed the model's {key}"


def test_fold_batch_norms_rejects_training_mode_and_non_modules():
    with pytest.raises(ValueError, match="model must be in eval mode"):
        models.fold_batch_norms(models.RedNet(**SMALL).train())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        models.fold_batch_norms(3)


# --- the fast op against the taps op in a whole network -----------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_rednet_fast_op_matches_taps(training, dtype):
    """RedNet-26 (10 classes, 2x3x40x36): logits, the input gradient and every parameter gradient, fast against taps.

    Gradients in training mode: layer4's BN normalises 8 values per channel (batch 2, 2x2 positions) and its
    backward subtracts their means, which amplifies rounding about 1e5-fold: float32 gradients of either op are
    1-3% from the float64 truth (both ops alike), float64 ones 4e-13 apart. So in training mode the gradients are
    compared in float64 only, at :data:`TRAINING_AMPLIFICATION` times the tolerance (2.4e-7, still far below a
    wrong op's 1e-2).
    """
    fast = randomize_batch_norms(models.RedNet(26, num_classes=10, backend="fast"), seed=3).to(dtype)
    taps = models.RedNet(26, num_classes=10, backend="taps").to(dtype)
    taps.load_state_dict(fast.state_dict())
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 40, 36, generator=generator, dtype=dtype)
    grad_out = torch.randn(2, 10, generator=generator, dtype=dtype)
    results = {}
    for name, model in (("fast", fast), ("taps", taps)):
        inputs = x.clone().requires_grad_(True)
        out = model.train(training)(inputs)
        out.backward(grad_out)
        results[name] = (out.detach(), inputs.grad, {key: p.grad for key, p in model.named_parameters()})
    what = f"({'train' if training else 'eval'}, {dtype})"
    rtol = 2 ** 10 * torch.finfo(dtype).eps
    assert_close(results["fast"][0], results["taps"][0], f"logits {what}", rtol)
    if training:  # the BN backward's cancellation: see the docstring
        if dtype == torch.float32:
            return
        rtol *= TRAINING_AMPLIFICATION
    assert_close(results["fast"][1], results["taps"][1], f"input gradient {what}", rtol)
    for key, grad in results["taps"][2].items():
        assert_close(results["fast"][2][key], grad, f"gradient of {key} {what}", rtol)


# --- the benchmark's bookkeeping ----------------------------------------------------------------------------
def test_interleaved_times_calls_each_key_once_per_round_in_order():
    order = []
    calls = {key: (lambda key=key: order.append(key)) for key in "abc"}
    times = networks.interleaved_times(calls, rounds=3, warmup=1)
    assert order == list("abc") * 4
    assert {key: len(value) for key, value in times.items()} == dict.fromkeys("abc", 3)


def test_ratios_take_each_networks_fastest_configuration():
    def row(network, mode, configuration, median, batch=1, threads="torch"):
        return {"network": network, "mode": mode, "configuration": configuration, "op_threads": threads,
                "batch": batch, "median_ms": median}

    rows = [row("rednet50", "eager", "contiguous", 90.0), row("rednet50", "eager", "folded", 60.0, threads=1),
            row("resnet50", "eager", "contiguous", 100.0), row("resnet50", "eager", "folded", 80.0),
            row("rednet50", "training eager", "contiguous", 170.0, batch=8),
            row("resnet50", "training eager", "contiguous", 200.0, batch=8)]
    result = {(r["mode"], r["batch"]): r for r in networks.ratios(rows)}
    assert result[("eager", 1)]["ratio"] == pytest.approx(60.0 / 80.0)
    assert result[("eager", 1)]["configuration"] == "folded (op threads 1)"
    assert result[("eager", 1)]["baseline_configuration"] == "folded"
    assert result[("eager", 1)]["target_met"] is True  # 0.75 <= 0.75
    assert result[("training eager", 8)]["ratio"] == pytest.approx(0.85)
    assert result[("training eager", 8)]["target"] == networks.TARGETS["training"]
    assert result[("eager", 1)]["flops_ratio"] == pytest.approx(0.65, abs=0.01)  # 2.67 / 4.09 GMACs


def test_saved_for_backward_counts_each_storage_once():
    a = torch.ones(100, requires_grad=True)
    b = torch.ones(100, requires_grad=True)

    def step():
        (a * b * a).sum().backward()  # a and b saved, then (a * b) and a again: three distinct storages

    assert networks.saved_for_backward_bytes(step) == 3 * 100 * 4


def test_check_close_names_what_differs():
    expected = torch.ones(3)
    networks.check_close(expected * (1 + 1e-6), expected, "same", log=lambda line: None)
    with pytest.raises(AssertionError, match="rednet50 eager folded, batch 1: logits differ .* by 1.00e-02"):
        networks.check_close(expected * 1.01, expected, "rednet50 eager folded, batch 1", log=lambda line: None)


@pytest.mark.parametrize("name, category", [("aten::mkldnn_convolution", "convolution"),
                                            ("aten::_slow_conv2d_forward", "convolution"),
                                            ("involution::involution2d", "involution op"),
                                            ("aten::native_batch_norm", "batch norm"), ("aten::clamp_min", "ReLU"),
                                            ("aten::add", "residual add"), ("aten::avg_pool2d", "pooling"),
                                            ("aten::copy_", "copies and layout"), ("aten::empty", "other")])
def test_profile_categories(name, category):
    assert networks.categorise(name) == category


def test_bench_networks_refuses_op_table_options(capsys):
    from involution.cli import main

    assert main(["bench", "--networks", "--layers", "0"]) == 2
    assert "--networks times whole networks" in capsys.readouterr().err


def test_op_thread_choices_skip_duplicates():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert networks.op_thread_choices("rednet50") == ("torch",)  # one thread: "torch" and 1 are the same
        torch.set_num_threads(2)
        assert networks.op_thread_choices("rednet50") == networks.OP_THREADS
        assert networks.op_thread_choices("resnet50") == ("torch",)  # no involution op to set threads for
    finally:
        torch.set_num_threads(previous)


def test_networks_json_existing_file_needs_force(tmp_path, capsys):
    existing = tmp_path / "networks.json"
    existing.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing, before any network is built
        networks.main(["--no-compile", "--json", str(existing)])
    assert exit_info.value.code == 2
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    assert existing.read_text() == "mine"
