"""RedNet and ResNet in NumPy: structure, parameter counts, whole-network gradients, state dicts and errors."""
import importlib.util
import sys

import numpy as np
import pytest

from involution.reference.checkpoint import load_npz, save_npz
from involution.reference.rednet import STAGE_BLOCKS, RedNet
from involution.reference.resnet import ResNet

TINY = dict(stage_blocks=(1, 1, 1, 1), num_classes=5, stem_channels=8, base_channels=4, kernel_size=3,
            group_channels=2, reduction=2)


def tiny_rednet(**overrides):
    return RedNet(**{**TINY, **overrides})


def test_state_dict_has_the_official_mmcls_keys():
    keys = list(RedNet(26).state_dict())
    for key in ["backbone.stem.0.conv.weight", "backbone.stem.0.bn.running_mean", "backbone.stem.1.conv1.conv.weight",
                "backbone.stem.1.conv2.conv.bias", "backbone.stem.2.weight", "backbone.stem.4.conv.weight",
                "backbone.layer1.0.conv1.weight", "backbone.layer1.0.bn1.num_batches_tracked",
                "backbone.layer1.0.conv2.conv2.conv.bias", "backbone.layer1.0.downsample.0.weight",
                "backbone.layer1.0.downsample.1.running_var", "head.fc.weight", "head.fc.bias"]:
        assert key in keys, f"{key} missing; first keys {keys[:8]}"
    assert keys[-2:] == ["head.fc.weight", "head.fc.bias"]
    assert "backbone.layer1.1.downsample.0.weight" not in keys, "identity blocks have no downsample"


# Parameters in millions as published in the official README (d-li14/involution, ImageNet table). Ours round to
# these for 26-101; RedNet-152 counts 33,984,582 (33.98M), 5k below the table's 33.99, hence the 0.01M slack.
PUBLISHED_PARAMS_M = {26: 9.23, 38: 12.39, 50: 15.54, 101: 25.65, 152: 33.99}


@pytest.mark.parametrize("depth", sorted(STAGE_BLOCKS))
def test_parameter_count_matches_the_paper(depth):
    model = RedNet(depth)
    count = sum(parameter.data.size for parameter in model.parameters())
    assert count / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[depth], abs=0.01), f"RedNet-{depth}: {count} parameters"
    stages = [len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5)]
    assert tuple(stages) == STAGE_BLOCKS[depth]


def test_resnet50_has_torchvisions_parameter_count():
    count = sum(parameter.data.size for parameter in ResNet(50).parameters())
    assert count == 25_557_032, count  # torchvision.models.resnet50: 25,557,032


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (17, 9), (32, 32)])
def test_any_input_size_gives_logits(size):
    model = tiny_rednet().eval()
    logits = model(np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32))
    assert logits.shape == (2, 5) and logits.dtype == np.float32 and np.isfinite(logits).all(), (size, logits)


@pytest.mark.parametrize("factory", [lambda: tiny_rednet(), lambda: tiny_rednet(kernel_gen="linear"),
                                     lambda: ResNet(stage_blocks=(1, 1, 1, 1), num_classes=5, stem_channels=8,
                                                    base_channels=4)],
                         ids=["rednet", "rednet-linear", "resnet"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_whole_network_gradient_is_a_directional_derivative(factory, training):
    """``<grad, d>`` equals ``(L(w + h d) - L(w - h d)) / 2h`` along random directions of all weights and of x."""
    model = factory().astype(np.float64).train(training)
    rng = np.random.default_rng(1)
    for parameter in model.parameters():  # move BN off its init so every path carries gradient
        parameter.data = parameter.data + 0.1 * rng.standard_normal(parameter.shape)
    x = rng.standard_normal((3, 3, 11, 9))
    grad_logits = rng.standard_normal((3, 5))
    model(x)
    grad_x = model.backward(grad_logits)
    parameters = model.parameters()
    directions = [rng.standard_normal(p.shape) for p in parameters]
    direction_x = rng.standard_normal(x.shape)
    analytic = sum(float(np.sum(p.grad * d)) for p, d in zip(parameters, directions))
    analytic += float(np.sum(grad_x * direction_x))
    originals = [p.data for p in parameters]

    def loss(h):
        for parameter, original, direction in zip(parameters, originals, directions):
            parameter.data = original + h * direction
        return float(np.sum(model(x + h * direction_x) * grad_logits))

    # Training-mode BN over 3 values per channel (layers at 1x1) is strongly curved: the central difference
    # converges as step**2 with relative error ~5e-6 at 1e-6 and ~5e-8 at 1e-7, where round-off (~1e-16 *
    # |loss| / step) is still ~1e-9. ReLU kinks are not crossed at this step.
    step = 1e-7
    numeric = (loss(step) - loss(-step)) / (2 * step)
    assert numeric == pytest.approx(analytic, rel=1e-5), f"analytic {analytic!r}, numeric {numeric!r}"


def test_float64_copy_agrees_with_float32():
    model = tiny_rednet().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    logits32 = model(x)
    logits64 = model.astype(np.float64)(x.astype(np.float64))
    assert logits64.dtype == np.float64
    # float32 round-off through ~20 layers with reductions of up to a few hundred terms.
    np.testing.assert_allclose(logits32, logits64, rtol=0, atol=1e-4 * np.abs(logits64).max(), err_msg="logits")


def test_train_mode_updates_statistics_and_eval_mode_does_not():
    model = tiny_rednet()
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    before = model.state_dict()
    model.eval()(x)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items()), "eval changed the state"
    model.train()(x)
    after = model.state_dict()
    assert int(after["backbone.layer1.0.bn1.num_batches_tracked"]) == 1
    assert not np.array_equal(before["backbone.stem.0.bn.running_mean"], after["backbone.stem.0.bn.running_mean"])


def test_same_seed_same_weights_other_seed_other_weights():
    first, second, other = tiny_rednet().state_dict(), tiny_rednet().state_dict(), tiny_rednet(seed=1).state_dict()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not np.array_equal(first["backbone.stem.0.conv.weight"], other["backbone.stem.0.conv.weight"])


def test_npz_round_trip_restores_outputs(tmp_path):
    model, copy = tiny_rednet(), tiny_rednet(seed=7)
    model.train()(np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))  # move the statistics
    save_npz(model, tmp_path / "weights.npz")
    load_npz(copy, tmp_path / "weights.npz")
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 10)).astype(np.float32)
    np.testing.assert_array_equal(copy.eval()(x), model.eval()(x))
    assert copy.state_dict()["backbone.stem.0.bn.num_batches_tracked"].dtype == np.int64


def test_load_state_dict_reports_every_problem_at_once():
    model = tiny_rednet()
    state = model.state_dict()
    del state["head.fc.bias"]
    state["head.extra"] = np.zeros(3)
    state["backbone.stem.0.conv.weight"] = np.zeros((1, 2, 3, 3))
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "missing keys (1): head.fc.bias" in message, message
    assert "unexpected keys (1): head.extra" in message, message
    assert "backbone.stem.0.conv.weight: expected shape (4, 3, 3, 3), got (1, 2, 3, 3)" in message, message
    state["backbone.stem.0.conv.weight"] = model.state_dict()["backbone.stem.0.conv.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert (missing, unexpected) == (["head.fc.bias"], ["head.extra"])


def test_load_state_dict_keeps_the_model_dtype():
    model = tiny_rednet()
    state = {key: np.asarray(value, np.float64) if value.dtype.kind == "f" else value
             for key, value in tiny_rednet(seed=3).state_dict().items()}
    model.load_state_dict(state)
    assert all(p.data.dtype == np.float32 for p in model.parameters())


def test_errors_name_the_layer():
    model = tiny_rednet()
    with pytest.raises(ValueError, match=r"Conv2d 'backbone.stem.0.conv': expected an input with 3 channels \(dim 1\), "
                                         r"got shape \(1, 1, 16, 16\)"):
        model(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(TypeError, match="Conv2d 'backbone.stem.0.conv': input must have dtype float32, got float64"):
        model(np.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match=r"Conv2d 'backbone.stem.0.conv': input must be 4-D"):
        model(np.zeros((3, 16, 16), np.float32))


def test_input_smaller_than_the_network_can_train_on():
    """Every layer pads, so any size >= 1 runs in eval mode; training needs 2+ values per BN channel."""
    model = tiny_rednet()
    model.eval()(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d 'backbone.layer2.0.conv2.conv1.bn': training needs more "
                                         r"than 1 value per channel .* got input shape \(1, 4, 1, 1\)"):
        model.train()(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=34), r"depth must be one of \[26, 38, 50, 101, 152\]"),
    (dict(stage_blocks=(1, 0, 1, 1)), r"stage_blocks\[1\] must be >= 1, got 0"),
    (dict(stem_channels=12, group_channels=4), r"channels \(6\) must be divisible by group_channels \(4\)"),
])
def test_bad_model_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RedNet(**kwargs)


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_fast_cpu_backend_matches_numpy():
    pytest.importorskip("involution.fast.cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 13, 11))
    grad_logits = np.random.default_rng(1).standard_normal((2, 5))
    results = []
    for backend in ("reference", "fast-cpu"):
        model = tiny_rednet(backend=backend).astype(np.float64)
        logits = model(x)
        grad_x = model.backward(grad_logits)
        results.append((logits, grad_x, [p.grad for p in model.parameters()]))
    (logits, grad_x, grads), (fast_logits, fast_grad_x, fast_grads) = results
    np.testing.assert_allclose(fast_logits, logits, rtol=1e-12, atol=1e-12 * np.abs(logits).max())
    np.testing.assert_allclose(fast_grad_x, grad_x, rtol=1e-10, atol=1e-12 * np.abs(grad_x).max())
    for fast, reference in zip(fast_grads, grads):
        np.testing.assert_allclose(fast, reference, rtol=1e-10, atol=1e-12 * np.abs(reference).max())


def test_state_dict_from_torch_says_when_torch_is_missing(monkeypatch):
    from involution.reference.checkpoint import state_dict_from_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="state_dict_from_torch needs PyTorch"):
        state_dict_from_torch({})
