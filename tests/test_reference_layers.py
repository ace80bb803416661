"""Every NumPy layer's hand-written backward against central finite differences (float64), and its errors."""
import numpy as np
import pytest

from involution.reference.activation import ReLU
from involution.reference.conv import Conv2d, ConvModule
from involution.reference.gradcheck import numerical_gradient
from involution.reference.involution_layer import Involution2d
from involution.reference.linear import Linear
from involution.reference.loss import softmax_cross_entropy
from involution.reference.norm import BatchNorm2d
from involution.reference.pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from involution.reference.rednet import Bottleneck


def randomize_norms(module, rng):
    """Non-trivial BN affine parameters and running statistics, so that eval mode is a real test."""
    for layer in module.modules():
        if isinstance(layer, BatchNorm2d):
            layer.weight.data = rng.uniform(0.5, 1.5, layer.num_features)
            layer.bias.data = rng.normal(0, 0.3, layer.num_features)
            layer.running_mean = rng.normal(0, 0.3, layer.num_features)
            layer.running_var = rng.uniform(0.5, 1.5, layer.num_features)
    return module


# (id, factory, input shape, train mode)
SAMPLES = [
    ("conv3x3-s2-p1-bias", lambda: Conv2d(3, 4, 3, stride=2, padding=1, bias=True), (2, 3, 7, 6), True),
    ("conv3x2-s12-p01", lambda: Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(0, 1)), (1, 2, 5, 6), True),
    ("conv1x1-s2", lambda: Conv2d(3, 5, 1, stride=2), (2, 3, 5, 4), True),
    ("conv1x1-bias", lambda: Conv2d(3, 2, 1, bias=True), (2, 3, 3, 4), True),
    ("conv1x1-p1", lambda: Conv2d(2, 3, 1, padding=1), (1, 2, 3, 3), True),
    ("bn-train", lambda: BatchNorm2d(3), (2, 3, 4, 5), True),
    ("bn-eval", lambda: BatchNorm2d(3), (2, 3, 4, 5), False),
    ("relu", ReLU, (2, 3, 4, 5), True),
    ("maxpool-3-2-1", MaxPool2d, (2, 2, 7, 6), True),
    ("maxpool-2-2-0", lambda: MaxPool2d(2, 2, 0), (1, 2, 5, 4), True),
    ("avgpool-2-ceil-odd", lambda: AvgPool2d(2), (1, 2, 5, 7), True),
    ("avgpool-3-2-ceil", lambda: AvgPool2d(3, 2), (1, 2, 6, 5), True),
    ("avgpool-2-floor", lambda: AvgPool2d(2, ceil_mode=False), (1, 2, 5, 4), True),
    ("global-avgpool", GlobalAvgPool2d, (2, 3, 3, 5), True),
    ("linear", lambda: Linear(5, 3), (4, 5), True),
    ("convmodule", lambda: ConvModule(2, 3, 3, padding=1), (2, 2, 4, 3), True),
    ("involution-s1", lambda: Involution2d(4, 3, 1, group_channels=2, reduction=2), (2, 4, 5, 4), True),
    ("involution-s2-odd", lambda: Involution2d(4, 3, 2, group_channels=2, reduction=2), (2, 4, 5, 7), True),
    ("involution-s2-eval", lambda: Involution2d(4, 3, 2, group_channels=2, reduction=2), (1, 4, 5, 5), False),
    ("involution-linear-all", lambda: Involution2d(4, 5, 2, group_channels="all", kernel_gen="linear"),
     (1, 4, 5, 6), True),
    ("involution-dilation2", lambda: Involution2d(4, 3, 1, group_channels=1, reduction=4, dilation=2),
     (1, 4, 6, 5), True),
    ("bottleneck-involution-s2", lambda: Bottleneck(4, 8, 2, kernel_size=3, group_channels=1, reduction=2),
     (2, 4, 5, 5), True),
    ("bottleneck-identity", lambda: Bottleneck(8, 8, 1, kernel_size=3, group_channels=2, reduction=2),
     (2, 8, 3, 4), True),
    ("bottleneck-conv-s2", lambda: Bottleneck(4, 8, 2, mixer="conv"), (2, 4, 5, 4), False),
]


@pytest.mark.parametrize("factory, shape, training", [s[1:] for s in SAMPLES], ids=[s[0] for s in SAMPLES])
def test_backward_equals_finite_differences(factory, shape, training):
    rng = np.random.default_rng(0)
    layer = randomize_norms(factory().astype(np.float64), rng).train(training)
    x = rng.standard_normal(shape)
    out = layer(x)
    grad_out = rng.standard_normal(out.shape)
    grad_x = layer.backward(grad_out)
    assert grad_x.shape == x.shape and grad_x.dtype == np.float64

    def loss():
        return float(np.sum(layer(x) * grad_out))

    # Central differences with eps 1e-6 in float64: round-off ~ulp(loss)/eps ~ 1e-10 relative, truncation
    # O(eps**2); 1e-6 relative leaves room for the curvature of BN and the kernel generator.
    fd = numerical_gradient(loss, x)
    np.testing.assert_allclose(grad_x, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max(),
                               err_msg=f"grad_x of {layer!r}, input shape {shape}")
    for name, parameter in layer.named_parameters():
        fd = numerical_gradient(loss, parameter.data)
        np.testing.assert_allclose(parameter.grad, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max(),
                                   err_msg=f"grad of {name} of {layer!r}, input shape {shape}")


def test_backward_accumulates_into_grad():
    layer = Conv2d(2, 3, 3, padding=1, bias=True).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    grad_out = np.ones((1, 3, 4, 4))
    layer(x)
    layer.backward(grad_out)
    once = layer.weight.grad.copy()
    layer.backward(grad_out)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


def test_batchnorm_running_statistics_follow_torch_rule():
    rng = np.random.default_rng(0)
    layer = BatchNorm2d(3, momentum=0.25).astype(np.float64)
    x = rng.normal(2.0, 3.0, (4, 3, 2, 5))
    layer(x)
    count = 4 * 2 * 5
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.running_mean, 0.25 * mean, rtol=1e-14)
    np.testing.assert_allclose(layer.running_var, 0.75 + 0.25 * var * count / (count - 1), rtol=1e-14)
    assert int(layer.num_batches_tracked) == 1
    eval_out = layer.eval()(x)
    expected = (x - layer.running_mean[:, None, None]) / np.sqrt(layer.running_var[:, None, None] + layer.eps)
    np.testing.assert_allclose(eval_out, expected, rtol=1e-13, atol=1e-13)
    assert int(layer.num_batches_tracked) == 1, "eval mode must not update the statistics"


def test_maxpool_gradient_goes_to_first_maximum_like_torch():
    layer = MaxPool2d(3, 2, 1)
    x = np.zeros((1, 1, 3, 3), np.float32)
    layer(x)
    grad_x = layer.backward(np.ones((1, 1, 2, 2), np.float32))
    # All tied: each window's first in-bounds element in row-major order wins (windows start at rows/cols -1, 1).
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(grad_x[0, 0], expected, err_msg=f"grad_x {grad_x[0, 0]}")


def test_avgpool_divides_by_in_bounds_elements():
    x = np.arange(15, dtype=np.float64).reshape(1, 1, 3, 5)
    out = AvgPool2d(2)(x)
    expected = np.array([[np.mean([0, 1, 5, 6]), np.mean([2, 3, 7, 8]), np.mean([4, 9])],
                         [np.mean([10, 11]), np.mean([12, 13]), 14.0]])
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-15, err_msg=f"got {out[0, 0]}")


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    loss, grad = softmax_cross_entropy(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(4), labels])), rel=1e-13)
    fd = numerical_gradient(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9, err_msg="grad_logits")
    big_loss, _ = softmax_cross_entropy(logits * 1e4, labels)
    assert np.isfinite(big_loss), "large logits must not overflow"


@pytest.mark.parametrize("logits, labels, error, message", [
    (np.zeros((2, 5)), np.array([0, 5]), ValueError, r"labels must lie in \[0, 5\), got values in \[0, 5\]"),
    (np.zeros((2, 5)), np.array([0.0, 1.0]), TypeError, "labels must be integers, got dtype float64"),
    (np.zeros((2, 5)), np.array([True, False]), TypeError, "labels must be integers, got dtype bool"),
    (np.zeros((2, 5)), np.array([0, 1, 2]), ValueError, r"labels must have shape \(2,\) .*, got \(3,\)"),
    (np.zeros((2, 5), np.float16), np.array([0, 1]), TypeError,
     "logits must have dtype float32 or float64, got float16"),
    (np.zeros((2, 0)), np.array([0, 1]), ValueError,
     r"logits must be 2-D \(B, K\) with K >= 1 classes, got shape \(2, 0\)"),
    (np.zeros((0, 5)), np.zeros(0, np.int64), ValueError, "needs at least one sample: the mean over an empty batch"),
])
def test_softmax_cross_entropy_rejects_bad_input(logits, labels, error, message):
    with pytest.raises(error, match=message):
        softmax_cross_entropy(logits, labels)


def test_layers_name_the_problem():
    conv = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2d: expected an input with 3 channels \(dim 1\), got shape \(1, 2, 5, 5"):
        conv(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: input 2x5 is smaller than the 3x3 kernel"):
        conv(np.zeros((1, 3, 2, 5), np.float32))
    with pytest.raises(TypeError, match="Conv2d: input must have dtype float32, got float64"):
        conv(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"Linear: input must be 2-D \(B, in_features\), got shape \(2, 3, 1\)"):
        Linear(3, 2)(np.zeros((2, 3, 1), np.float32))
    with pytest.raises(ValueError, match="BatchNorm2d: training needs more than 1 value per channel"):
        BatchNorm2d(2)(np.zeros((1, 2, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d: input 1x1 is smaller than the 2x2 window"):
        MaxPool2d(2, 2, 0)(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        MaxPool2d(3, 2, 2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(channels=6, group_channels=4), ValueError, r"channels \(6\) must be divisible by group_channels \(4\)"),
    (dict(channels=8, reduction=3, group_channels=4), ValueError, r"channels \(8\) must be divisible by reduction"),
    (dict(channels=8, kernel_size=4, group_channels=4), ValueError, "kernel_size must be odd"),
    (dict(channels=8, group_channels=4, kernel_gen="mlp"), ValueError, "kernel_gen must be one of"),
    (dict(channels=8, group_channels=4, backend="taps"), ValueError,
     r"backend must be a numpy backend, one of \('reference', 'fast-cpu', 'fast-cuda'\), got 'taps'"),
    (dict(channels=8, group_channels=4, stride=0), ValueError, "stride must be >= 1"),
    (dict(channels=8.0, group_channels=4), TypeError, "channels must be an int"),
])
def test_involution_layer_rejects_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        Involution2d(**kwargs)


def test_involution_layer_checks_its_input():
    layer = Involution2d(8, 3, group_channels=4, reduction=2)
    with pytest.raises(ValueError, match=r"Involution2d: expected an input with 8 channels \(dim 1\)"):
        layer(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(TypeError, match="Involution2d: input must have dtype float32, got float64"):
        layer(np.zeros((1, 8, 5, 5)))


def test_involution_layer_output_size_is_ceil_for_odd_inputs():
    layer = Involution2d(4, 7, 2, group_channels=2, reduction=2)
    for height, width in [(1, 1), (5, 7), (8, 9)]:
        out = layer(np.ones((2, 4, height, width), np.float32))
        assert out.shape == (2, 4, -(-height // 2), -(-width // 2)), (height, width, out.shape)
