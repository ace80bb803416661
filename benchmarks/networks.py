"""Whole-network CPU timings: torch RedNet-50 with the plain tap-loop op and with the fast numba op, and torch ResNet-50.

Inference (``eval()``, ``torch.no_grad()``) at ``batch x 3 x 224 x 224``, float32, one thread count for
torch and numba. The two RedNet runs share one set of weights and are checked against each other first.
"""
from __future__ import annotations

import numpy as np

from involution.benchmarks.op_cpu import median_seconds


def build_networks() -> dict:
    """name -> torch module in eval mode: RedNet-50 (taps), RedNet-50 (fast), ResNet-50."""
    from involution.torch import RedNet, ResNet

    rednet = RedNet(depth=50, seed=0, backend="taps").eval()
    return {"rednet50-taps": rednet, "rednet50-fast": rednet, "resnet50": ResNet(depth=50, seed=0).eval()}


def parameter_count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def run(batch: int = 1, repeats: int = 5, size: int = 224, log=print) -> list[dict]:
    """Validate RedNet fast against taps, then time each network's forward; one JSON-ready row each."""
    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    networks = build_networks()
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32))
    rednet = networks["rednet50-taps"]
    with torch.no_grad():
        rednet.set_backend("taps")
        expected = rednet(images)
        rednet.set_backend("fast")
        got = rednet(images)
    error = float((got - expected).abs().max() / expected.abs().max())
    if not error < 1e-4:  # float32 through ~50 layers; catches a wrong op, not rounding
        raise AssertionError(f"RedNet-50 fast vs taps logits: max relative difference {error:.2e} > 1e-4")
    log(f"RedNet-50 logits, fast op vs taps op: max relative difference {error:.1e}")
    rows = []
    for name, network in networks.items():
        if name.startswith("rednet50-"):
            network.set_backend(name.removeprefix("rednet50-"))
        with torch.no_grad():
            seconds = median_seconds(lambda: network(images), repeats)
        rows.append({"network": name, "batch": batch, "size": size, "forward_ms": 1e3 * seconds,
                     "parameters": parameter_count(network)})
        log(f"{name:>16s}  batch {batch}  {size}x{size}  {1e3 * seconds:8.1f} ms  "
            f"{parameter_count(network) / 1e6:5.2f} M parameters")
    return rows
