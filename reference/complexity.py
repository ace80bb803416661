"""Analytic parameter and FLOP counts of the reference RedNet / ResNet and their layers, per layer.

No data flows: the counter walks the module tree in forward order and propagates shapes with the layers' own
geometry (``Conv2d.geometry``, the pools' ``geometry``, :func:`~involution.spec.check_geometry`
for the involution op), so the one output-size rule of the project decides every size.

Each :class:`Layer` holds raw counts (weight multiply-adds, bias adds, element-wise ops); a *convention*
turns them into MACs and FLOPs (``docs/complexity.md`` explains each):

* ``full``: every multiply-add of inference; FLOPs = 2 x MACs + element-wise ops (bias adds, BN, ReLU,
  pooling, residual adds);
* ``published``: the convention of the official RedNet table (mmcv's counter on backbone + neck, FLOPs =
  MACs plus its element-wise terms, with the involution op counted at the *input* resolution);
* ``fvcore``: convolution and linear MACs only, no bias, no involution op (what common tools report);
  FLOPs = MACs.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from math import prod

from .activation import ReLU
from .conv import Conv2d
from .involution_layer import Involution2d
from .linear import Linear
from .module import Chain, Module
from .norm import BatchNorm2d
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .rednet import STAGE_BLOCKS, Bottleneck, RedNet
from .resnet import ResNet
from involution.spec import check_geometry, pair

CONVENTIONS = ("full", "published", "fvcore")
FLOPS_DEFINITION = {
    "full": "FLOPs = 2 x MACs + element-wise ops (bias adds, BN 2/element, ReLU 1/element, pooling 1 per "
            "window element read, residual add 1/element); MACs include the involution op and the head",
    "published": "FLOPs = MACs + mmcv's element-wise terms (conv bias, BN 2/element, ReLU, pooling 1 per input "
                 "element), backbone + neck only, involution op at input resolution (mmcv: 1 MAC = 1 FLOP)",
    "fvcore": "FLOPs = MACs of conv and linear layers only (no bias, no involution op): fvcore's conv + linear "
              "entries (its total adds BN); torch's FlopCounterMode reports 2 x this",
}
# The official README (d-li14/involution): params (M) and FLOPs (G) at 224x224, and the "% fewer" than ResNet.
PUBLISHED = {
    26: {"params_m": 9.23, "flops_g": 1.73, "fewer_params_pct": 32.8, "fewer_flops_pct": 29.2},
    38: {"params_m": 12.39, "flops_g": 2.22, "fewer_params_pct": 36.7, "fewer_flops_pct": 31.3},
    50: {"params_m": 15.54, "flops_g": 2.71, "fewer_params_pct": 39.5, "fewer_flops_pct": 34.1},
    101: {"params_m": 25.65, "flops_g": 4.74, "fewer_params_pct": 42.6, "fewer_flops_pct": 40.5},
    152: {"params_m": 33.99, "flops_g": 6.79, "fewer_params_pct": 43.5, "fewer_flops_pct": 41.4},
}
POOLS = ("MaxPool2d", "AvgPool2d", "GlobalAvgPool2d")


@dataclass(frozen=True)
class Layer:
    """One operation of the forward pass, with raw counts for a whole batch.

    ``name`` is the state-dict path of the module that runs it (an involution's op carries the layer's own
    path, a residual add the block's); ``macs`` are weight (or involution-kernel) multiply-adds at the output
    resolution; ``bias_adds`` one per output element of a biased layer; ``element_ops`` the element-wise work
    of the ``full`` convention.
    """

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    bias_adds: int = 0
    element_ops: int = 0

    def cost(self, convention: str) -> tuple[int, int]:
        """``(macs, flops)`` of this layer under ``convention``."""
        if convention == "full":
            return self.macs, 2 * self.macs + self.bias_adds + self.element_ops
        if convention == "fvcore":
            macs = self.macs if self.type in ("Conv2d", "Linear") else 0
            return macs, macs
        if convention == "published":
            if self.name == "head" or self.name.startswith("head."):
                return 0, 0
            macs = self.macs
            if self.type == "Involution2d":  # C*K*K per *input* pixel instead of per output pixel
                macs = self.macs // prod(self.output_shape[2:]) * prod(self.input_shape[2:])
            elementwise = {"BatchNorm2d": 2 * prod(self.input_shape), "ReLU": prod(self.output_shape)}
            elementwise.update(dict.fromkeys(POOLS, prod(self.input_shape)))
            return macs, macs + self.bias_adds + elementwise.get(self.type, 0)
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


@dataclass(frozen=True)
class Totals:
    """Whole-model numbers under one convention."""

    convention: str
    params: int
    macs: int
    flops: int


@dataclass(frozen=True)
class Report:
    """Every :class:`Layer` of one forward pass in order, and the model's parameter count."""

    model: str
    input_shape: tuple[int, ...]
    params: int
    layers: tuple[Layer, ...]

    def total(self, convention: str = "full") -> Totals:
        """Sums of the per-layer MACs and FLOPs under ``convention``; params of the whole model."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        macs = flops = 0
        for layer in self.layers:
            layer_macs, layer_flops = layer.cost(convention)
            macs, flops = macs + layer_macs, flops + layer_flops
        return Totals(convention, self.params, macs, flops)

    def rows(self, convention: str = "full") -> list[dict]:
        """The layers as dicts (shapes as lists) with ``macs`` and ``flops`` under ``convention``."""
        rows = []
        for layer in self.layers:
            macs, flops = layer.cost(convention)
            rows.append({"name": layer.name, "type": layer.type, "input_shape": list(layer.input_shape),
                         "output_shape": list(layer.output_shape), "params": layer.params, "macs": macs,
                         "flops": flops})
        return rows


def _own_params(module: Module) -> int:
    return sum(parameter.data.size for parameter in module._parameters.values())


def _join(name: str, child_name: str) -> str:
    return f"{name}.{child_name}" if name else child_name


def _conv(module: Conv2d, name, shape, layers):
    g = module.geometry(shape)
    out_shape = (g.batch, module.out_channels, g.out_h, g.out_w)
    bias_adds = prod(out_shape) if module.bias is not None else 0
    layers.append(Layer(name, "Conv2d", shape, out_shape, _own_params(module), g.macs * module.out_channels,
                        bias_adds))
    return out_shape


def _linear(module: Linear, name, shape, layers):
    out_shape = (shape[0], module.out_features)
    bias_adds = prod(out_shape) if module.bias is not None else 0
    layers.append(Layer(name, "Linear", shape, out_shape, _own_params(module), prod(shape) * module.out_features,
                        bias_adds))
    return out_shape


def _batch_norm(module: BatchNorm2d, name, shape, layers):
    layers.append(Layer(name, "BatchNorm2d", shape, shape, _own_params(module), 0, 0, 2 * prod(shape)))
    return shape


def _relu(module: ReLU, name, shape, layers):
    layers.append(Layer(name, "ReLU", shape, shape, 0, 0, 0, prod(shape)))
    return shape


def _pool(module, name, shape, layers):
    g = module.geometry(shape)
    out_shape = g.out_shape
    layers.append(Layer(name, type(module).__name__, shape, out_shape, 0, 0, 0,
                        prod(out_shape) * g.kernel_h * g.kernel_w))
    return out_shape


def _global_pool(module: GlobalAvgPool2d, name, shape, layers):
    out_shape = tuple(shape[:2])
    layers.append(Layer(name, "GlobalAvgPool2d", shape, out_shape, 0, 0, 0, prod(shape)))
    return out_shape


def _involution(module: Involution2d, name, shape, layers):
    kernel_features = shape
    for child_name, child in module._modules.items():  # avgpool, conv1, conv2: the kernel generator, in order
        kernel_features = _walk(child, _join(name, child_name), kernel_features, layers)
    batch, _, out_h, out_w = kernel_features
    kernel_shape = (batch, module.groups, module.kernel_size, module.kernel_size, out_h, out_w)
    g = check_geometry(shape, kernel_shape, module.stride, module.padding, module.dilation)
    layers.append(Layer(name, "Involution2d", shape, g.out_shape, 0, g.macs))
    return g.out_shape


def _bottleneck(module: Bottleneck, name, shape, layers):
    names = {id(child): child_name for child_name, child in module._modules.items()}
    out_shape = shape
    for child in module.residual():
        out_shape = _walk(child, _join(name, names[id(child)]), out_shape, layers)
    identity_shape = shape
    if "downsample" in module._modules:
        identity_shape = _walk(module.downsample, _join(name, "downsample"), shape, layers)
    if identity_shape != out_shape:
        raise ValueError(f"{module.describe()}: residual {out_shape} and shortcut {identity_shape} differ")
    layers.append(Layer(name, "Add", out_shape, out_shape, 0, 0, 0, prod(out_shape)))
    return _walk(module.relu3, _join(name, "relu3"), out_shape, layers)


def _chain(module: Chain, name, shape, layers):
    for child_name, child in module._modules.items():
        shape = _walk(child, _join(name, child_name), shape, layers)
    return shape


# Exact types: a subclass may compute something else, so it must be registered on its own.
HANDLERS = {Conv2d: _conv, Linear: _linear, BatchNorm2d: _batch_norm, ReLU: _relu, MaxPool2d: _pool,
            AvgPool2d: _pool, GlobalAvgPool2d: _global_pool, Involution2d: _involution, Bottleneck: _bottleneck}


def _walk(module, name, shape, layers):
    """Append the layers of ``module`` run on an input of ``shape``; return its output shape."""
    handler = HANDLERS.get(type(module))
    if handler is None and isinstance(module, Chain) and type(module).forward is Chain.forward:
        handler = _chain  # Sequential, ConvModule, backbones, classifiers: children in order
    if handler is None:
        raise TypeError(f"count: no rule for {type(module).__name__} at {name or 'the top'!r}; "
                        f"known: {sorted(cls.__name__ for cls in HANDLERS)} and plain Chain containers")
    return handler(module, name, shape, layers)


def input_channels(module: Module) -> int:
    """Channels the first layer of ``module`` expects."""
    for attribute in ("in_features", "in_channels", "channels", "num_features"):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    first = next((m for m in module.modules() if isinstance(m, (Conv2d, Linear))), None)
    if first is None:
        raise TypeError(f"count: cannot tell the input channels of {type(module).__name__}; pass input_shape")
    return first.in_features if isinstance(first, Linear) else first.in_channels


def count(model: Module, input_size=(224, 224), batch: int = 1, input_shape=None, name: str = "") -> Report:
    """Count parameters and per-layer work of ``model`` on one input, without running it.

    Parameters
    ----------
    model : reference module
        ``RedNet``, ``ResNet``, ``Bottleneck``, ``Involution2d``, ``Conv2d``... (any tree of known layers).
    input_size : int or (H, W)
    batch : int
    input_shape : tuple, optional
        The full input shape, e.g. ``(B, C, H, W)``; overrides ``input_size``/``batch`` (needed for a lone
        ``Linear``, whose input is ``(B, in_features)``).
    name : str
        Label for the report (default: the model's class name).

    Returns
    -------
    Report
        ``layers`` in forward order with shapes ``(B, C, H, W)`` (``(B, F)`` after the neck); ``params`` is the
        model's whole parameter count.
    """
    if input_shape is None:
        height, width = pair(input_size, "input_size", minimum=1)
        batch = pair(batch, "batch", minimum=1)[0]
        channels = input_channels(model)
        input_shape = (batch, channels) if isinstance(model, Linear) else (batch, channels, height, width)
    input_shape = tuple(int(size) for size in input_shape)
    layers: list[Layer] = []
    _walk(model, "", input_shape, layers)
    params = sum(parameter.data.size for parameter in model.parameters())
    return Report(name or type(model).__name__, input_shape, params, tuple(layers))


# -- the standard variants -----------------------------------------------------------------------------------
MODEL_FAMILIES = {"rednet": RedNet, "resnet": ResNet}
INVOLUTION_OPTIONS = ("kernel_size", "group_channels", "reduction", "kernel_gen")


def parse_model_name(model_name: str) -> tuple[str, int]:
    """``"rednet50"`` -> ``("rednet", 50)``; a ValueError listing the valid names otherwise."""
    family = model_name.rstrip("0123456789")
    depth = model_name[len(family):]
    if family not in MODEL_FAMILIES or not depth or int(depth) not in STAGE_BLOCKS:
        names = [f"{f}{d}" for f in MODEL_FAMILIES for d in STAGE_BLOCKS]
        raise ValueError(f"model must be one of {names}, got {model_name!r}")
    return family, int(depth)


def build(model_name: str, **options) -> Module:
    """``"rednet50"``, ``"resnet101"``... as a reference model; ``options`` go to the constructor.

    ResNet takes no involution options; those are dropped for it.
    """
    family, depth = parse_model_name(model_name)
    if family == "resnet":
        options = {key: value for key, value in options.items() if key not in INVOLUTION_OPTIONS}
    return MODEL_FAMILIES[family](depth, **options)


def standard_reports(family: str = "rednet", input_size=(224, 224), **options) -> dict[str, Report]:
    """Reports of the five standard depths of ``family`` ("rednet" or "resnet")."""
    return {f"{family}{depth}": count(build(f"{family}{depth}", **options), input_size, name=f"{family}{depth}")
            for depth in STAGE_BLOCKS}


def round_as_published(value: float) -> float:
    """Round to 3 decimals, then to 2, both half-up: how the official table's numbers come out (see docs)."""
    three = Decimal(repr(value)).quantize(Decimal("0.001"), ROUND_HALF_UP)
    return float(three.quantize(Decimal("0.01"), ROUND_HALF_UP))
