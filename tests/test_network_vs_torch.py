"""The NumPy network (layers, Involution2d, Bottleneck, RedNet, ResNet) against the PyTorch twins, in float64.

Random weights, BN affine parameters and running statistics are drawn in the torch model and loaded into the
NumPy model through ``state_dict_from_torch`` (the keys must agree exactly). Then logits, every parameter
gradient, the input gradient and the updated BN statistics must agree to float64 accuracy: 1e-10 relative for
values, 1e-8 for gradients (relative to the largest magnitude of each compared array).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("involution.torch.models")

from involution.reference.checkpoint import state_dict_from_torch  # noqa: E402
from involution.reference.involution_layer import Involution2d  # noqa: E402
from involution.reference.rednet import Bottleneck, RedNet  # noqa: E402
from involution.reference.resnet import ResNet  # noqa: E402

VALUE_RTOL, GRAD_RTOL = 1e-10, 1e-8


def assert_close(actual, expected, rtol, what):
    """``max|actual - expected| <= rtol * max|expected|``, reporting the worst element."""
    expected = expected.detach().numpy() if torch.is_tensor(expected) else np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch {expected.shape}"
    error = np.abs(actual - expected)
    scale = max(np.abs(expected).max(), np.finfo(np.float64).tiny)
    worst = np.unravel_index(np.argmax(error), error.shape) if error.size else ()
    assert error.max() <= rtol * scale, (
        f"{what}: max relative error {error.max() / scale:.3e} > {rtol:g} at {worst}: "
        f"numpy {actual[worst]!r} vs torch {expected[worst]!r} (max |torch| {scale:.3e}, shape {actual.shape})")


def randomize(torch_module, seed):
    """Draw every parameter and BN statistic so that eval mode and every gradient path are exercised."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low

    with torch.no_grad():
        for module in torch_module.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(uniform(module.bias.shape, -0.3, 0.3))
                module.running_mean.copy_(uniform(module.running_mean.shape, -0.3, 0.3))
                module.running_var.copy_(uniform(module.running_var.shape, 0.5, 1.5))
                module.num_batches_tracked.fill_(3)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.copy_(uniform(module.bias.shape, -0.2, 0.2))
    return torch_module


def make_pair(numpy_model, torch_model, seed=0):
    """Both models in float64 with the torch model's random weights loaded into the NumPy one."""
    torch_model = randomize(torch_model.double(), seed)
    numpy_model.astype(np.float64).load_state_dict(state_dict_from_torch(torch_model))
    return numpy_model, torch_model


def compare(numpy_model, torch_model, shape, training, seed=1, gradients=True):
    """Run both models on one input in one mode; compare outputs, gradients and BN statistics."""
    numpy_model.train(training)
    torch_model.train(training)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x_torch = torch.tensor(x, requires_grad=True)
    out_torch = torch_model(x_torch)
    out = numpy_model(x)
    mode = "train" if training else "eval"
    assert_close(out, out_torch, VALUE_RTOL, f"output ({mode}, input {shape})")
    for name, value in numpy_model.named_buffers():
        expected = torch_model.get_buffer(name)
        assert_close(np.asarray(value, np.float64), expected.double(), VALUE_RTOL, f"buffer {name} ({mode})")
    if not gradients:
        return
    grad_out = rng.standard_normal(out.shape)
    torch_model.zero_grad()
    out_torch.backward(torch.tensor(grad_out))
    numpy_model.zero_grad()
    grad_x = numpy_model.backward(grad_out)
    assert_close(grad_x, x_torch.grad, GRAD_RTOL, f"input gradient ({mode}, input {shape})")
    torch_parameters = dict(torch_model.named_parameters())
    assert [name for name, _ in numpy_model.named_parameters()] == list(torch_parameters)
    for name, parameter in numpy_model.named_parameters():
        assert_close(parameter.grad, torch_parameters[name].grad, GRAD_RTOL, f"grad of {name} ({mode})")


# --- the involution layer ---------------------------------------------------------------------------------
LAYER_CASES = [
    # (channels, kernel_size, stride, group_channels, reduction, kernel_gen, dilation, input shape)
    (8, 3, 1, 4, 2, "bottleneck", 1, (2, 8, 9, 7)),
    (8, 7, 2, 4, 4, "bottleneck", 1, (2, 8, 9, 7)),
    (8, 5, 2, 2, 2, "bottleneck", 1, (1, 8, 10, 6)),
    (8, 3, 2, "all", 4, "linear", 1, (2, 8, 7, 11)),
    (6, 3, 1, "all", 3, "bottleneck", 2, (2, 6, 8, 5)),
    # (h, w) pairs are honoured, never truncated (issue 14): Kh*Kw*G kernel channels, an (sh, sw) pool
    (8, (3, 5), (2, 1), 4, 2, "bottleneck", (1, 2), (2, 8, 9, 10)),
    (8, (5, 1), (1, 3), "all", 4, "linear", (2, 1), (1, 8, 7, 8)),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=[f"C{c[0]}K{c[1]}s{c[2]}gc{c[3]}r{c[4]}-{c[5]}-d{c[6]}"
                                                   for c in LAYER_CASES])
def test_involution_layer_matches_torch(case, training):
    channels, kernel_size, stride, group_channels, reduction, kernel_gen, dilation, shape = case
    options = dict(kernel_size=kernel_size, stride=stride, group_channels=group_channels, reduction=reduction,
                   kernel_gen=kernel_gen, dilation=dilation)
    pair = make_pair(Involution2d(channels, **options), torch_models.Involution2d(channels, **options))
    compare(*pair, shape, training)


# --- one bottleneck -----------------------------------------------------------------------------------------
BLOCK_CASES = [
    # (in, out, stride, mixer, input shape)
    (8, 16, 2, "involution", (2, 8, 9, 7)),
    (16, 16, 1, "involution", (2, 16, 6, 5)),
    (8, 16, 2, "conv", (2, 8, 7, 8)),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[f"{c[0]}-{c[1]}-s{c[2]}-{c[3]}" for c in BLOCK_CASES])
def test_bottleneck_matches_torch(case, training):
    in_channels, out_channels, stride, mixer, shape = case
    options = dict(mixer=mixer, kernel_size=3, group_channels=2, reduction=2)
    pair = make_pair(Bottleneck(in_channels, out_channels, stride, **options),
                     torch_models.Bottleneck(in_channels, out_channels, stride, **options))
    compare(*pair, shape, training)


# --- whole networks -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rednets():
    """depth -> (NumPy RedNet, torch RedNet) with the same random float64 weights, and the torch state."""
    pairs = {}
    for depth in (26, 50):
        numpy_model, torch_model = make_pair(RedNet(depth, num_classes=10), torch_models.RedNet(depth, num_classes=10),
                                             seed=depth)
        pairs[depth] = (numpy_model, torch_model, {k: v.clone() for k, v in torch_model.state_dict().items()})
    return pairs


def fresh(pair):
    """The pair with the random state restored (train-mode forwards move the BN running statistics)."""
    numpy_model, torch_model, state = pair
    torch_model.load_state_dict(state)
    numpy_model.load_state_dict(state_dict_from_torch(state))
    return numpy_model, torch_model


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("size", [(64, 64), (65, 57)], ids=["64x64", "65x57"])
@pytest.mark.parametrize("depth", [26, 50])
def test_rednet_logits_and_statistics_match_torch(rednets, depth, size, training):
    compare(*fresh(rednets[depth]), (2, 3, *size), training, gradients=False)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_rednet26_gradients_match_torch(rednets, training):
    compare(*fresh(rednets[26]), (2, 3, 65, 57), training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_rednet_with_a_rectangular_kernel_matches_torch(training):
    options = dict(stage_blocks=(1, 1, 1, 1), num_classes=5, stem_channels=8, base_channels=4, kernel_size=(3, 7),
                   group_channels=2, reduction=2)
    pair = make_pair(RedNet(**options), torch_models.RedNet(**options), seed=3)
    assert pair[0].backbone.layer1[0].conv2.kernel_size == (3, 7), "kernel_size=(3, 7) must not be truncated"
    compare(*pair, (2, 3, 13, 11), training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_resnet26_matches_torch(training):
    pair = make_pair(ResNet(26, num_classes=10), torch_models.ResNet(26, num_classes=10), seed=5)
    compare(*pair, (2, 3, 49, 40), training)


def test_state_dict_keys_and_shapes_equal_torch():
    for numpy_model, torch_model in [(RedNet(26), torch_models.RedNet(26)), (ResNet(50), torch_models.ResNet(50))]:
        ours = {key: value.shape for key, value in numpy_model.state_dict().items()}
        theirs = {key: tuple(value.shape) for key, value in torch_model.state_dict().items()}
        assert list(ours) == list(theirs), f"key order differs: {set(ours) ^ set(theirs)}"
        assert ours == theirs, {key: (ours[key], theirs[key]) for key in ours if ours[key] != theirs[key]}


def test_state_dict_from_torch_reads_checkpoint_files(tmp_path):
    torch_model = randomize(torch_models.RedNet(26, num_classes=10), seed=2)
    torch.save({"meta": {"epoch": 1}, "state_dict": torch_model.state_dict()}, tmp_path / "rednet26.pth")
    model = RedNet(26, num_classes=10)
    model.load_state_dict(state_dict_from_torch(tmp_path / "rednet26.pth"))
    for key, value in torch_model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value.numpy(), err_msg=key)
    with pytest.raises(TypeError, match="expected a state dict"):
        state_dict_from_torch(3)
