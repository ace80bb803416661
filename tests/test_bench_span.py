"""``benchmarks/span.py``, the fused span pass against the two steps: its layer counts are RedNet-50's, it refuses to
time a fused pass that computes something else, and its weighted total is the sum it says."""
from __future__ import annotations

import collections

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from involution.benchmarks import span  # noqa: E402
from involution.benchmarks.layers import REDNET_LAYERS, layer_name  # noqa: E402
from involution.torch.models import Involution2d, RedNet  # noqa: E402


def test_layer_counts_are_rednet50s():
    """Each of REDNET_LAYERS (channels, input size, stride, kernel) occurs REDNET50_COUNTS times in RedNet-50."""
    sizes = {}

    def record_size(module, inputs):
        sizes[id(module)] = inputs[0].shape[-1]

    network = RedNet(50, seed=0).eval()
    hooks = [module.register_forward_pre_hook(record_size) for module in network.modules()
             if isinstance(module, Involution2d)]
    with torch.no_grad():
        network(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    found = collections.Counter((module.channels, sizes[id(module)], module.stride[0], module.kernel_size[0])
                                for module in network.modules() if isinstance(module, Involution2d))
    expected = collections.Counter({(layer.channels, layer.size, layer.stride, layer.kernel): count
                                    for layer, count in zip(REDNET_LAYERS, span.REDNET50_COUNTS)})
    assert found == expected, f"RedNet-50's involutions {dict(found)}, the benchmark counts {dict(expected)}"


def test_layers_refuse_a_fused_pass_that_differs(monkeypatch):
    from involution.torch import span as span_op

    real = span_op.involution2d_span
    monkeypatch.setattr(span_op, "involution2d_span", lambda *args: real(*args) * (1 + 1e-3))
    with pytest.raises(AssertionError, match=r"fused differs by"):
        span.time_layers([1], rounds=1, log=lambda line: None)


def test_weighted_total_is_the_counted_sum():
    lines = []
    rows = span.time_layers([1], rounds=1, log=lines.append)
    layers, total = rows[:-1], rows[-1]
    assert [row["layer"] for row in layers] == [layer_name(layer) for layer in REDNET_LAYERS]
    for key in ("two_step_ms", "fused_ms", "fused_numba_ms"):
        expected = sum(count * row[key] for count, row in zip(span.REDNET50_COUNTS, layers))
        assert total[key] == pytest.approx(expected), f"{key}: total {total[key]}, counted sum {expected}"
    assert total["speedup"] == pytest.approx(total["two_step_ms"] / total["fused_ms"])
    assert all(row["relative_error"] <= span.RELATIVE_TOLERANCE for row in layers), layers
    assert len(lines) == len(rows), lines


def test_involution_flops_are_the_layers_counted_sum():
    """The per-image FLOPs the benchmark prints: the span convolution and op as each layer's timed call counts them,
    plus the reduce convolution (C -> C/4 at the output positions), each layer by its count."""
    flops = span.involution_flops()
    timed = sum(count * span.layer_calls(layer, 1)[2] for layer, count in zip(REDNET_LAYERS, span.REDNET50_COUNTS))
    assert flops["span_and_op"] == timed, (flops, timed)
    span_and_op = sum(count * 2 * (layer.size // layer.stride) ** 2 * layer.kernel ** 2 *
                      (layer.channels // 16 * (layer.channels // span.REDUCTION) + layer.channels)
                      for layer, count in zip(REDNET_LAYERS, span.REDNET50_COUNTS))  # 16 channels per group
    assert timed == span_and_op, (timed, span_and_op)
    reduce = sum(count * 2 * (layer.size // layer.stride) ** 2 * layer.channels * (layer.channels // span.REDUCTION)
                 for layer, count in zip(REDNET_LAYERS, span.REDNET50_COUNTS))
    assert flops["reduce"] == reduce and flops["total"] == timed + reduce, (flops, reduce)
