"""Algebraic properties checked without the oracle: linearity, depthwise convolution, shifts by one-hot kernels."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from involution.conformance.strategies import cases, random_arrays, scalars
from involution.conformance.tolerances import assert_within, bound, forward_terms, magnitudes


def test_linear_in_x(impl, prove):
    """``f(a*x1 + b*x2, k) = a*f(x1, k) + b*f(x2, k)``."""
    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        a, b = data.draw(scalars(), label="a"), data.draw(scalars(), label="b")
        x2, _ = random_arrays(case.geometry, case.dtype, case.seed + 1)
        combined = (a * case.x + b * x2).astype(case.dtype)
        lhs = prove.forward(combined, case.kernel, *case.params)
        rhs = a * prove.forward(case.x, case.kernel, *case.params) + b * prove.forward(x2, case.kernel, *case.params)
        magnitude = abs(a) * magnitudes(case.x, case.kernel, case.geometry, any_group_rule=True) + \
            abs(b) * magnitudes(x2, case.kernel, case.geometry, any_group_rule=True)
        # One term more than the forward for rounding a*x1 + b*x2 and the combination of the results.
        assert_within(lhs, rhs, bound(forward_terms(case.geometry) + 1, case.dtype, magnitude),
                      f"f({a}*x1 + {b}*x2) vs {a}*f(x1) + {b}*f(x2)", case)

    prove(check)


def test_linear_in_kernel(impl, prove):
    """``f(x, a*k1 + b*k2) = a*f(x, k1) + b*f(x, k2)``."""
    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        a, b = data.draw(scalars(), label="a"), data.draw(scalars(), label="b")
        _, kernel2 = random_arrays(case.geometry, case.dtype, case.seed + 1)
        combined = (a * case.kernel + b * kernel2).astype(case.dtype)
        lhs = prove.forward(case.x, combined, *case.params)
        rhs = a * prove.forward(case.x, case.kernel, *case.params) + b * prove.forward(case.x, kernel2, *case.params)
        magnitude = abs(a) * magnitudes(case.x, case.kernel, case.geometry, any_group_rule=True) + \
            abs(b) * magnitudes(case.x, kernel2, case.geometry, any_group_rule=True)
        assert_within(lhs, rhs, bound(forward_terms(case.geometry) + 1, case.dtype, magnitude),
                      f"f(x, {a}*k1 + {b}*k2) vs {a}*f(x, k1) + {b}*f(x, k2)", case)

    prove(check)


def test_constant_kernel_equals_depthwise_conv2d(impl, prove):
    """A kernel constant over batch and positions is a depthwise ``conv2d``, channel c with group c // (C//G)'s weights.

    ``conv2d`` is cross-correlation, the same tap order as involution, so no kernel flip.
    """
    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        g = case.geometry
        weight = np.random.default_rng(case.seed + 1).standard_normal((g.groups, g.kernel_h, g.kernel_w))
        weight = weight.astype(case.dtype)
        kernel = np.broadcast_to(weight[None, :, :, :, None, None], g.kernel_shape).copy()
        out = prove.forward(case.x, kernel, *case.params)
        per_channel = torch.from_numpy(weight.astype(np.float64)).repeat_interleave(g.group_channels, dim=0)[:, None]

        def conv(x, w):
            return F.conv2d(torch.from_numpy(x.astype(np.float64)), w, stride=g.stride, padding=g.padding,
                            dilation=g.dilation, groups=g.channels).numpy()

        expected, magnitude = conv(case.x, per_channel), conv(np.abs(case.x), per_channel.abs())
        assert_within(out, expected, bound(forward_terms(g), case.dtype, magnitude), "forward vs depthwise conv2d",
                      case)

    prove(check)


def test_one_hot_kernel_shifts_input(impl, prove):
    """A kernel that is 1 at tap (u, v) of each group and 0 elsewhere copies ``x_pad[.., i*sh + u*dh, j*sw + v*dw]``."""
    def check(data):
        case = data.draw(cases(impl.limits), label="case")
        g = case.geometry
        taps = data.draw(st.lists(st.tuples(st.integers(0, g.kernel_h - 1), st.integers(0, g.kernel_w - 1)),
                                  min_size=g.groups, max_size=g.groups), label="tap (u, v) of each group")
        kernel = np.zeros(g.kernel_shape, dtype=case.dtype)
        (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
        x_padded = np.pad(case.x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        expected = np.empty(g.out_shape, dtype=case.dtype)
        for group, (u, v) in enumerate(taps):
            kernel[:, group, u, v] = 1
            channels = slice(group * g.group_channels, (group + 1) * g.group_channels)
            expected[:, channels] = x_padded[:, channels, u * dh::sh, v * dw::sw][:, :, :g.out_h, :g.out_w]
        out = prove.forward(case.x, kernel, *case.params)
        assert_within(out, expected, 0.0, f"one-hot taps {taps} vs shifted input", case)

    prove(check)
