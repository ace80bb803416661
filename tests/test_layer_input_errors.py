"""Issue 14, point 1: layer and network options are honoured or rejected by name, never truncated; dtypes,
backward before forward, masked and empty inputs.

(h, w) pairs for ``kernel_size``, ``stride`` and ``dilation`` are honoured by ``Involution2d`` (the torch twin
agrees in float64: tests/test_network_vs_torch.py); everything else that is not an int is a named error.
"""
import numpy as np
import pytest

from involution.reference.activation import ReLU
from involution.reference.conv import Conv2d
from involution.reference.involution_layer import Involution2d
from involution.reference.linear import Linear
from involution.reference.loops import involution2d_loops
from involution.reference.norm import BatchNorm2d
from involution.reference.pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from involution.reference.rednet import Bottleneck, RedNet
from involution.reference.resnet import ResNet

TINY = dict(stage_blocks=(1, 1, 1, 1), num_classes=5, stem_channels=8, base_channels=4, kernel_size=3,
            group_channels=2, reduction=2)


def generated_kernel(layer, x):
    """The kernel ``(B, G, Kh, Kw, Ho, Wo)`` the layer's generator makes from ``x``, computed here step by step."""
    features = x
    for module in layer.generator():
        features = module(features)
    batch, _, out_h, out_w = features.shape
    return features.reshape(batch, layer.groups, *layer.kernel_size, out_h, out_w)


# --- (h, w) pairs are honoured -------------------------------------------------------------------------
@pytest.mark.parametrize("options, expected_shape", [
    (dict(kernel_size=3, stride=(2, 1)), (1, 16, 5, 10)),  # was (1, 16, 5, 5): the stride pair was truncated
    (dict(kernel_size=(3, 5)), (1, 16, 10, 10)),  # was a 3x3 kernel
    (dict(kernel_size=3, dilation=(1, 2)), (1, 16, 10, 10)),  # dilation was 1
    (dict(kernel_size=(5, 3), stride=(1, 3), dilation=(2, 1)), (1, 16, 10, 4)),
])
def test_involution_layer_honours_pairs(options, expected_shape):
    layer = Involution2d(16, group_channels=4, reduction=2, dtype=np.float64, **options).eval()
    x = np.random.default_rng(0).standard_normal((1, 16, 10, 10))
    out = layer(x)
    kernel_h, kernel_w = layer.kernel_size
    assert out.shape == expected_shape, (options, out.shape)
    assert layer.conv2.conv.out_channels == kernel_h * kernel_w * layer.groups, "kernel generation emits Kh*Kw*G"
    assert layer.padding == ((kernel_h - 1) // 2 * layer.dilation[0], (kernel_w - 1) // 2 * layer.dilation[1])
    if layer.stride != (1, 1):
        assert layer.avgpool.kernel_size == layer.stride and layer.avgpool.stride == layer.stride
    expected = involution2d_loops(x, generated_kernel(layer, x), layer.stride, layer.padding, layer.dilation)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max(),
                               err_msg=f"options {options}")


def test_rednet_honours_a_rectangular_kernel():
    model = RedNet(26, kernel_size=(3, 7))
    involutions = [m for m in model.modules() if isinstance(m, Involution2d)]
    stem, blocks = involutions[0], involutions[1:]
    assert stem.kernel_size == (3, 3), "the stem's involution is 3x3 whatever kernel_size says"
    assert len(blocks) == sum((1, 2, 4, 1)) and all(m.kernel_size == (3, 7) for m in blocks), \
        [m.kernel_size for m in blocks]
    assert all(m.conv2.conv.out_channels == 21 * m.groups for m in blocks)
    logits = model.eval()(np.random.default_rng(0).standard_normal((1, 3, 9, 12)).astype(np.float32))
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


# --- everything else is a named error -----------------------------------------------------------------
@pytest.mark.parametrize("options, error, message", [
    (dict(channels=(8, 16)), TypeError, r"channels must be an int, got tuple \(8, 16\)"),
    (dict(channels=8.0), TypeError, "channels must be an int, got float 8.0"),
    (dict(channels=True), TypeError, "channels must be an int, got True"),
    (dict(channels=8, kernel_size=(3, 4)), ValueError, r"kernel_size must be odd \(same padding\), got \(3, 4\)"),
    (dict(channels=8, kernel_size=(3, 5, 7)), ValueError, r"kernel_size must be an int or an \(h, w\) pair, got"),
    (dict(channels=8, kernel_size=3.0), TypeError, r"kernel_size must be an int or an \(h, w\) pair of ints"),
    (dict(channels=8, stride=(2, 0)), ValueError, r"stride must be >= 1, got \(2, 0\)"),
    (dict(channels=8, stride=(2, 1.5)), TypeError, "stride must be an int or an"),
    (dict(channels=8, dilation=(1, 2, 3)), ValueError, "dilation must be an int or an"),
    (dict(channels=8, group_channels=(4, 4)), TypeError, "group_channels must be an int"),
    (dict(channels=8, group_channels="some"), TypeError, "group_channels must be an int, got str 'some'"),
    (dict(channels=8, reduction=2.0), TypeError, "reduction must be an int, got float 2.0"),
    (dict(channels=8, dtype=np.float16), TypeError, "dtype must be float32 or float64, got float16"),
    (dict(channels=8, dtype=np.int32), TypeError, "dtype must be float32 or float64, got int32"),
    (dict(channels=8, dtype="no-such-dtype"), TypeError, "dtype must be float32 or float64, got 'no-such-dtype'"),
    (dict(channels=8, dtype=None), TypeError, "dtype must be float32 or float64, got None"),
])
def test_involution_layer_rejects_what_it_cannot_honour(options, error, message):
    with pytest.raises(error, match=message):
        Involution2d(**{"group_channels": 4, "reduction": 2, **options})


@pytest.mark.parametrize("factory, error, message", [
    (lambda: RedNet(depth=50.0), TypeError, "depth must be an int, got float 50.0"),
    (lambda: RedNet(depth="50"), TypeError, "depth must be an int, got str '50'"),
    (lambda: RedNet(stage_blocks=(True, 1, 1, 1)), TypeError, r"stage_blocks\[0\] must be an int, got True"),
    (lambda: RedNet(stage_blocks=(1, 2.0)), TypeError, r"stage_blocks\[1\] must be an int, got float 2.0"),
    (lambda: RedNet(stage_blocks="1111"), TypeError, "stage_blocks must be a tuple of ints, got str"),
    (lambda: RedNet(stage_blocks=()), ValueError, "stage_blocks must hold at least one stage"),
    (lambda: RedNet(**{**TINY, "num_classes": 0}), ValueError, "num_classes must be >= 1, got 0"),
    (lambda: RedNet(**{**TINY, "num_classes": -1}), ValueError, "num_classes must be >= 1, got -1"),
    (lambda: RedNet(**{**TINY, "num_classes": 5.0}), TypeError, "num_classes must be an int, got float 5.0"),
    (lambda: RedNet(**{**TINY, "stem_channels": 9}), ValueError, "stem_channels must be even .* got 9"),
    (lambda: RedNet(**{**TINY, "base_channels": 0}), ValueError, "base_channels must be >= 1, got 0"),
    (lambda: RedNet(**{**TINY, "in_channels": 0}), ValueError, "in_channels must be >= 1, got 0"),
    (lambda: RedNet(**{**TINY, "seed": -1}), ValueError, "seed must be >= 0, got -1"),
    (lambda: RedNet(**{**TINY, "kernel_size": (3, 4)}), ValueError, r"kernel_size must be odd .* got \(3, 4\)"),
    (lambda: RedNet(**{**TINY, "dtype": np.float16}), TypeError, "dtype must be float32 or float64, got float16"),
    (lambda: RedNet(**{**TINY, "dtype": "int64"}), TypeError, "dtype must be float32 or float64, got int64"),
    (lambda: ResNet(depth=26.0), TypeError, "depth must be an int, got float 26.0"),
    (lambda: ResNet(stage_blocks=(1, 1), num_classes=0), ValueError, "num_classes must be >= 1, got 0"),
    (lambda: Bottleneck(4, 8.0), TypeError, "out_channels must be an int, got float 8.0"),
    (lambda: Bottleneck(4, 8, stride=(2, 2, 2)), ValueError, r"stride must be an int or an \(h, w\) pair"),
    (lambda: Linear(3, 0), ValueError, "out_features must be >= 1, got 0"),
    (lambda: Linear(3.0, 2), TypeError, "in_features must be an int, got float 3.0"),
    (lambda: BatchNorm2d(0), ValueError, "num_features must be >= 1, got 0"),
    (lambda: Conv2d(3, 4, 3, dtype=np.float16), TypeError, "dtype must be float32 or float64, got"),
    (lambda: BatchNorm2d(3, dtype=np.int32), TypeError, "dtype must be float32 or float64, got"),
    (lambda: Linear(3, 2, dtype=np.complex64), TypeError, "dtype must be float32 or float64, got"),
])
def test_networks_and_layers_reject_bad_options_by_name(factory, error, message):
    with pytest.raises(error, match=message):
        factory()


def test_bottleneck_stride_one_pair_adds_no_downsample():
    assert "downsample" not in Bottleneck(8, 8, stride=(1, 1), kernel_size=3, group_channels=2, reduction=2)._modules
    assert Bottleneck(8, 8, stride=(2, 1), kernel_size=3, group_channels=2, reduction=2).downsample[0].stride == (2, 1)


def test_astype_rejects_other_dtypes():
    model = Involution2d(8, 3, group_channels=4, reduction=2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        model.astype(np.float16)
    assert all(p.data.dtype == np.float32 for p in model.parameters()), "a rejected astype must change nothing"


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, np.bool_, np.complex128])
def test_inputs_of_other_dtypes_are_named(dtype):
    layer, model = Involution2d(8, 3, group_channels=4, reduction=2), RedNet(**TINY)
    with pytest.raises(TypeError, match=f"Involution2d: input must have dtype float32, got {np.dtype(dtype)}"):
        layer(np.zeros((1, 8, 5, 5), dtype))
    with pytest.raises(TypeError, match=f"Conv2d 'backbone.stem.0.conv': input must have dtype float32, "
                                        f"got {np.dtype(dtype)}"):
        model(np.zeros((1, 3, 5, 5), dtype))


def test_masked_inputs_are_rejected():
    x = np.ma.masked_array(np.ones((1, 8, 5, 5), np.float32), mask=False)
    x[0, 0, 0, 0] = np.ma.masked
    with pytest.raises(TypeError, match="Involution2d: input must be a plain NumPy array, got a masked array"):
        Involution2d(8, 3, group_channels=4, reduction=2)(x)
    with pytest.raises(TypeError, match="Conv2d 'backbone.stem.0.conv': input must be a plain NumPy array"):
        RedNet(**TINY)(np.ma.masked_array(np.ones((1, 3, 5, 5), np.float32)))


# --- backward before forward ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer, grad_shape, name", [
    (Involution2d(8, 3, group_channels=4, reduction=2), (1, 8, 5, 5), "Involution2d"),
    (Conv2d(3, 4, 3), (1, 4, 3, 3), "Conv2d"),
    (BatchNorm2d(3), (1, 3, 3, 3), "BatchNorm2d"),
    (Linear(3, 2), (1, 2), "Linear"),
    (ReLU(), (1, 2), "ReLU"),
    (MaxPool2d(), (1, 2, 3, 3), "MaxPool2d"),
    (AvgPool2d(2), (1, 2, 3, 3), "AvgPool2d"),
    (GlobalAvgPool2d(), (1, 2), "GlobalAvgPool2d"),
    (RedNet(**TINY), (1, 5), "Linear 'head.fc'"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_backward_before_forward_is_a_named_error(layer, grad_shape, name):
    with pytest.raises(RuntimeError, match=f"{name}: backward called before forward"):
        layer.backward(np.ones(grad_shape, np.float32))


# --- empty batch: empty results of the right shapes, as torch ---------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("factory", [lambda: RedNet(**TINY), lambda: ResNet(stage_blocks=(1, 1), num_classes=5,
                                                                             stem_channels=8, base_channels=4)],
                         ids=["rednet", "resnet"])
def test_empty_batch_gives_empty_logits_and_zero_gradients(factory, training):
    model = factory().train(training)
    before = model.state_dict()
    x = np.zeros((0, 3, 17, 12), np.float32)
    logits = model(x)
    assert logits.shape == (0, 5) and logits.dtype == np.float32
    grad_x = model.backward(np.zeros((0, 5), np.float32))
    assert grad_x.shape == x.shape and grad_x.dtype == np.float32
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.shape == parameter.shape, name
        assert not parameter.grad.any(), f"{name}: an empty batch must give a zero gradient"
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(before[key]) + training, key  # torch counts the call in training
        else:
            np.testing.assert_array_equal(value, before[key], err_msg=f"{key} changed on an empty batch")


def test_empty_batch_batchnorm_matches_torch():
    torch = pytest.importorskip("torch")
    ours, theirs = BatchNorm2d(3).astype(np.float64), torch.nn.BatchNorm2d(3).double()
    out, out_torch = ours(np.zeros((0, 3, 4, 5))), theirs(torch.zeros(0, 3, 4, 5, dtype=torch.float64))
    assert out.shape == tuple(out_torch.shape)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name).numpy(), err_msg=name)


def test_empty_batch_through_an_involution_layer_with_pairs():
    layer = Involution2d(8, (3, 5), (2, 1), group_channels=4, reduction=2)
    out = layer(np.zeros((0, 8, 7, 6), np.float32))
    assert out.shape == (0, 8, 4, 6)
    assert layer.backward(out).shape == (0, 8, 7, 6)


@pytest.mark.parametrize("options, error, message", [
    (dict(num_classes=0), ValueError, "num_classes must be >= 1, got 0"),
    (dict(num_classes=-1), ValueError, "num_classes must be >= 1, got -1"),
    (dict(num_classes=2.0), TypeError, "num_classes must be an int"),
    (dict(base_channels=(8, 8)), TypeError, "base_channels must be an int"),
])
def test_torch_networks_reject_what_the_numpy_ones_reject(options, error, message):
    torch_models = pytest.importorskip("involution.torch.models")
    for numpy_class, torch_class in ((RedNet, torch_models.RedNet), (ResNet, torch_models.ResNet)):
        for network in (numpy_class, torch_class):
            with pytest.raises(error, match=message):
                network(26, **options)
