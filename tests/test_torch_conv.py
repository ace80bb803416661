"""``InvolutionConv2d``: the NumPy twin's values and gradients (as ``Involution2d``'s), gradcheck, both backends,
a drop-in for ``nn.Conv2d`` in an ``nn.Sequential``, default groups for any channel count, named errors."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("involution.torch.models")

from test_network_vs_torch import compare, make_pair  # noqa: E402  (tests/: the Involution2d value tests' helpers)
from test_torch_bridge import assert_fast_equals_taps  # noqa: E402  (the Involution2d fast-vs-taps check)
from torch import nn  # noqa: E402

from involution import backends  # noqa: E402
from involution.reference.conv import Conv2d as NumpyConv2d  # noqa: E402
from involution.reference.involution_layer import Involution2d as NumpyInvolution2d  # noqa: E402
from involution.reference.module import Chain  # noqa: E402
from involution.torch import InvolutionConv2d  # noqa: E402
from involution.torch.conv import MAX_GROUP_CHANNELS, MAX_REDUCTION, default_groups  # noqa: E402


class NumpyInvolutionConv2d(Chain):
    """The layer's NumPy twin: the reference ``Involution2d``, then a 1x1 reference ``Conv2d`` if the counts differ."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, dilation, groups, reduction, kernel_gen, bias):
        super().__init__()
        self.involution = NumpyInvolution2d(in_channels, kernel_size, stride, in_channels // groups, reduction,
                                            kernel_gen, dilation)
        if in_channels != out_channels:
            self.projection = NumpyConv2d(in_channels, out_channels, 1, bias=bias)


CASES = [
    # (in, out, kernel_size, stride, dilation, groups, reduction, kernel_gen, bias, input shape)
    (8, 16, 3, 2, 1, 2, 2, "bottleneck", True, (2, 8, 9, 7)),
    (12, 12, 3, 1, 2, 3, 4, "bottleneck", True, (2, 12, 8, 9)),
    (6, 4, (3, 5), (2, 1), (1, 2), 1, 3, "linear", False, (1, 6, 7, 10)),
]
IDS = ["{}-{}-K{}-s{}-d{}-G{}-r{}-{}-bias{}".format(*case[:9]).replace(" ", "") for case in CASES]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layer_matches_the_numpy_reference(case, training):
    """Outputs, input and parameter gradients and BN statistics equal the NumPy twin's (float64)."""
    *arguments, shape = case
    in_channels, out_channels, kernel_size, stride, dilation, groups, reduction, kernel_gen, bias = arguments
    layer = InvolutionConv2d(in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups,
                             reduction=reduction, kernel_gen=kernel_gen, bias=bias)
    compare(*make_pair(NumpyInvolutionConv2d(*arguments), layer), shape, training)


@pytest.mark.parametrize("backend", backends.names("torch"))
def test_gradcheck_float64(backend):
    pytest.importorskip(backends.get(backend).module)
    torch.manual_seed(0)
    layer = InvolutionConv2d(4, 6, 3, 2, dilation=(1, 2), groups=2, reduction=2, backend=backend).double().eval()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    parameters = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *_: layer(x), (x, *parameters))


def test_fast_layer_equals_taps_layer():
    pytest.importorskip("numba")
    torch.manual_seed(0)
    layer = InvolutionConv2d(32, 48, 7, 2).double()
    x = torch.randn(2, 32, 11, 10, dtype=torch.float64)
    assert_fast_equals_taps(layer, x)


def swap_convolutions(model: nn.Module) -> nn.Module:
    """docs/deploy.md's swap, as a user writes it: every 3x3 ``nn.Conv2d`` child becomes an ``InvolutionConv2d``."""
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
            setattr(model, name, InvolutionConv2d(child.in_channels, child.out_channels, 3, child.stride,
                                                  child.padding))
    return model


def yolo_style_model():
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU(),
                         nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.SiLU(),
                         nn.Conv2d(24, 24, 3, 1, 1), nn.BatchNorm2d(24), nn.SiLU(), nn.Conv2d(24, 10, 1))


@pytest.mark.parametrize("size", [(32, 32), (27, 40)])
def test_swaps_into_a_sequential_model_with_the_same_shapes(size):
    torch.manual_seed(0)
    model, swapped = yolo_style_model(), swap_convolutions(yolo_style_model())
    assert [type(child).__name__ for child in swapped].count("InvolutionConv2d") == 3
    x = torch.randn(2, 3, *size, requires_grad=True)
    out = swapped(x)
    assert out.shape == model(x).shape
    out.square().sum().backward()
    missing = [name for name, parameter in swapped.named_parameters() if parameter.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [*range(1, 20), 24, 32, 48, 96])
def test_default_groups_fit_any_channel_count(channels):
    groups = default_groups(channels)
    group_channels, remainder = divmod(channels, groups)
    assert remainder == 0 and group_channels <= MAX_GROUP_CHANNELS
    larger = [d for d in range(group_channels + 1, MAX_GROUP_CHANNELS + 1) if channels % d == 0]
    assert not larger, f"{channels} channels: {group_channels} per group, but {larger} also divide"
    layer = InvolutionConv2d(channels, channels, 3)
    assert layer.involution.groups == groups
    reduction = layer.involution.reduction
    assert channels % reduction == 0 and reduction <= MAX_REDUCTION and (channels % 4 or reduction == 4)
    assert not [r for r in range(reduction + 1, MAX_REDUCTION + 1) if channels % r == 0]
    assert layer(torch.randn(1, channels, 4, 5)).shape == (1, channels, 4, 5)


@pytest.mark.parametrize("arguments, error, message", [
    (dict(padding=0), ValueError, r"padding must be None or the same padding .* = \(1, 1\), got 0"),
    (dict(padding=(1, 2)), ValueError, r"padding must be None or the same padding .* got \(1, 2\)"),
    (dict(groups=5), ValueError, r"groups must divide in_channels \(8\), got 5"),
    (dict(groups=0), ValueError, r"groups must be >= 1, got 0"),
    (dict(in_channels=8.0), TypeError, r"in_channels must be an int"),
    (dict(out_channels=0), ValueError, r"out_channels must be >= 1, got 0"),
    (dict(bias=None), TypeError, r"bias must be a bool, got NoneType"),
    (dict(kernel_size=4), ValueError, r"kernel_size must be odd"),
    (dict(reduction=3), ValueError, r"channels \(8\) must be divisible by reduction \(3\)"),
])
def test_bad_arguments_raise_named_errors(arguments, error, message):
    with pytest.raises(error, match=message):
        InvolutionConv2d(**{"in_channels": 8, "out_channels": 16, "kernel_size": 3, **arguments})

