"""Analytic parameter and FLOP counts, per layer, from shapes alone: RedNet / ResNet, their layers, and the
detectors of ``involution.reference.detection``.

No data flows and no weight is built: the counter walks a description (``involution.reference.architecture``;
a built reference module is read with ``describe``) in forward order and propagates shapes with the project's
output-size rules (``involution.spec.output_size``, the pools' ``pool_output_size``,
:func:`~involution.spec.check_geometry` for the involution op), checking each layer's input channels as the
layer itself would.

Each :class:`Layer` holds raw counts (weight multiply-adds, bias adds, element-wise ops); a *convention*
turns them into MACs and FLOPs (``docs/complexity.md`` explains each):

* ``full``: every multiply-add of inference; FLOPs = 2 x MACs + element-wise ops (bias adds, BN, ReLU,
  pooling, residual adds);
* ``published``: the convention of the official RedNet tables (mmcv's counter on what the official
  ``get_flops`` runs -- backbone + neck of a classifier, all of a detector's ``forward_dummy`` --, FLOPs = MACs
  plus its element-wise terms, the involution op counted at the *input* resolution, trainable params only);
* ``fvcore``: convolution and linear MACs only, no bias, no involution op (what common tools report);
  FLOPs = MACs.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from math import prod

from . import architecture
from .architecture import ReLU as ReLUDescription
from .module import Module
from .pool import pool_output_size
from .rednet import STAGE_BLOCKS, RedNet
from .resnet import ResNet
from involution.spec import check_geometry, check_int, output_size, pair

CONVENTIONS = ("full", "published", "fvcore")
FLOPS_DEFINITION = {
    "full": "FLOPs = 2 x MACs + element-wise ops (bias adds, BN 2/element, ReLU 1/element, pooling 1 per "
            "window element read, residual add 1/element); MACs include the involution op and the head",
    "published": "FLOPs = MACs + mmcv's element-wise terms (conv bias, BN 2/element, ReLU, pooling 1 per input "
                 "element), backbone + neck only, involution op at input resolution (mmcv: 1 MAC = 1 FLOP)",
    "fvcore": "FLOPs = MACs of conv and linear layers only (no bias, no involution op): fvcore's conv + linear "
              "entries (its total adds BN); torch's FlopCounterMode reports 2 x this",
}
# The published convention on mmdet's / mmseg's forward_dummy (involution.reference.detection).
PUBLISHED_DETECTION_DEFINITION = (
    "FLOPs = MACs + mmcv's element-wise terms of the modules it hooks (conv bias, BN 2/element, ReLU, pooling 1 per "
    "input element; nothing for SyncBN, functional ops, RoIAlign or mmcv's conv wrappers), the whole "
    "forward_dummy, involution op at input resolution; params trainable only")
# The official README (d-li14/involution): params (M) and FLOPs (G) at 224x224, and the "% fewer" than ResNet.
PUBLISHED = {
    26: {"params_m": 9.23, "flops_g": 1.73, "fewer_params_pct": 32.8, "fewer_flops_pct": 29.2},
    38: {"params_m": 12.39, "flops_g": 2.22, "fewer_params_pct": 36.7, "fewer_flops_pct": 31.3},
    50: {"params_m": 15.54, "flops_g": 2.71, "fewer_params_pct": 39.5, "fewer_flops_pct": 34.1},
    101: {"params_m": 25.65, "flops_g": 4.74, "fewer_params_pct": 42.6, "fewer_flops_pct": 40.5},
    152: {"params_m": 33.99, "flops_g": 6.79, "fewer_params_pct": 43.5, "fewer_flops_pct": 41.4},
}
# The paper's ablation table (RedNet-50 at 224x224): option, value, FLOPs (G) as printed (params agree already).
ABLATION = (
    ("kernel_size", 3, 2.4), ("kernel_size", 5, 2.5), ("kernel_size", 7, 2.6), ("kernel_size", 9, 2.7),
    ("group_channels", 1, 5.0), ("group_channels", 4, 3.0), ("group_channels", 16, 2.6), ("group_channels", "all", 2.4),
    ("kernel_gen", "linear", 3.0), ("reduction", 1, 3.2), ("reduction", 4, 2.6), ("reduction", 16, 2.4),
)
POOLS = ("MaxPool2d", "AvgPool2d", "GlobalAvgPool2d")
WEIGHTED = ("Conv2d", "ConvTranspose2d", "Linear")  # the layers fvcore and FlopCounterMode count
# Work mmcv's counter never sees: it hooks module types (exactly), so SyncBatchNorm and the functional calls
# (F.relu, F.max_pool2d, F.interpolate, tensor adds) count nothing.
MMCV_SKIPS = ("SyncBatchNorm", "relu", "max_pool2d", "interpolate", "add", "Add", "RoIAlign")


@dataclass(frozen=True)
class Layer:
    """One operation of the forward pass, with raw counts for a whole batch.

    ``name`` is the state-dict path of the module that runs it (an involution's op carries the layer's own
    path, a residual add the block's); ``macs`` are weight (or involution-kernel) multiply-adds at the output
    resolution; ``bias_adds`` one per output element of a biased layer; ``element_ops`` the element-wise work
    of the ``full`` convention. ``trainable`` is false for frozen layers (the detectors' stem and first stage);
    ``mmcv_hook`` false for a module whose exact type the mmcv counter of the published numbers had no hook for
    (mmcv's ``Conv2d`` / ``ConvTranspose2d`` wrappers in the mask head).
    """

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    bias_adds: int = 0
    element_ops: int = 0
    trainable: bool = True
    mmcv_hook: bool = True

    def cost(self, convention: str) -> tuple[int, int]:
        """``(macs, flops)`` of this layer under ``convention``."""
        if convention == "full":
            return self.macs, 2 * self.macs + self.bias_adds + self.element_ops
        if convention == "fvcore":
            macs = self.macs if self.type in WEIGHTED else 0
            return macs, macs
        if convention == "published":
            if self.name == "head" or self.name.startswith("head."):
                return 0, 0
            macs = self.macs
            if self.type == "Involution2d":  # C*K*K per *input* pixel instead of per output pixel
                macs = self.macs // prod(self.output_shape[2:]) * prod(self.input_shape[2:])
            elementwise = {"BatchNorm2d": 2 * prod(self.input_shape), "ReLU": prod(self.output_shape)}
            elementwise.update(dict.fromkeys(POOLS, prod(self.input_shape)))
            if self.type in MMCV_SKIPS or not self.mmcv_hook:  # no hook for this module type or a functional call
                return 0, 0
            bias_adds = self.bias_adds if self.type != "Linear" else 0  # mmcv's linear hook counts no bias
            return macs, macs + bias_adds + elementwise.get(self.type, 0)
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
        params = self.trainable_params if convention == "published" else self.params
        for layer in self.layers:
            layer_macs, layer_flops = layer.cost(convention)
            macs, flops = macs + layer_macs, flops + layer_flops
        return Totals(convention, params, macs, flops)

    @property
    def trainable_params(self) -> int:
        """Parameters of the layers not frozen (mmcv counts ``requires_grad`` parameters only)."""
        return sum(layer.params for layer in self.layers if layer.trainable)

    def rows(self, convention: str = "full") -> list[dict]:
        """The layers as dicts (shapes as lists) with ``macs`` and ``flops`` under ``convention``."""
        rows = []
        for layer in self.layers:
            macs, flops = layer.cost(convention)
            rows.append({"name": layer.name, "type": layer.type, "input_shape": list(layer.input_shape),
                         "output_shape": list(layer.output_shape), "params": layer.params, "macs": macs,
                         "flops": flops})
        return rows


def _check_channels(description, name, shape, channels, ndim=4):
    """The model's own input check: ``shape`` must be ``ndim``-D with ``channels`` channels."""
    if len(shape) != ndim or shape[1] != channels:
        layout = "(B, C, H, W)" if ndim == 4 else "(B, F)"
        raise ValueError(f"count: {name or 'the model'} ({description.type}) expects input_shape {layout} with "
                         f"{'C' if ndim == 4 else 'F'} = {channels}, got {tuple(shape)}")


def _window_output(description, name, shape, sizes):
    """``(B, C, Ho, Wo)`` from per-axis output sizes, or a ValueError when the window does not fit."""
    out_h, out_w = sizes
    if out_h < 1 or out_w < 1:
        raise ValueError(f"count: {name or 'the model'} ({description.type}): input {shape[2]}x{shape[3]} is smaller "
                         f"than the {'x'.join(map(str, description.kernel_size))} kernel with padding "
                         f"{description.padding} can take (output would be {out_h}x{out_w})")
    return out_h, out_w


def _conv(description, name, shape, layers):
    _check_channels(description, name, shape, description.in_channels)
    out_h, out_w = _window_output(description, name, shape, [
        output_size(size, kernel, stride, padding, dilation) for size, kernel, stride, padding, dilation in zip(
            shape[2:], description.kernel_size, description.stride, description.padding, description.dilation)])
    out_shape = (shape[0], description.out_channels, out_h, out_w)
    macs = prod(out_shape) * description.in_channels * prod(description.kernel_size)
    bias_adds = prod(out_shape) if description.bias else 0
    layers.append(Layer(name, "Conv2d", shape, out_shape, description.params, macs, bias_adds))
    return out_shape


def _conv_transpose(description, name, shape, layers):
    """No padding, no output padding: ``Ho = (H - 1) * stride + kernel``; one MAC per input pixel, tap and
    channel pair (what it really does, and mmcv's rule)."""
    _check_channels(description, name, shape, description.in_channels)
    out_shape = (shape[0], description.out_channels, *[(size - 1) * stride + kernel for size, stride, kernel in zip(
        shape[2:], description.stride, description.kernel_size)])
    macs = prod(shape) * description.out_channels * prod(description.kernel_size)
    bias_adds = prod(out_shape) if description.bias else 0
    layers.append(Layer(name, "ConvTranspose2d", shape, out_shape, description.params, macs, bias_adds))
    return out_shape


def _linear(description, name, shape, layers):
    _check_channels(description, name, shape, description.in_features, ndim=2)
    out_shape = (shape[0], description.out_features)
    bias_adds = prod(out_shape) if description.bias else 0
    layers.append(Layer(name, "Linear", shape, out_shape, description.params, prod(shape) * description.out_features,
                        bias_adds))
    return out_shape


def _batch_norm(description, name, shape, layers):
    _check_channels(description, name, shape, description.channels)
    layers.append(Layer(name, description.type, shape, shape, description.params, 0, 0, 2 * prod(shape)))
    return shape


def _relu(description, name, shape, layers):
    layers.append(Layer(name, description.type, shape, shape, 0, 0, 0, prod(shape)))
    return shape


def _pool(description, name, shape, layers):
    if len(shape) != 4:
        raise ValueError(f"count: {name or 'the model'} ({description.type}) expects input_shape (B, C, H, W), "
                         f"got {tuple(shape)}")
    out_h, out_w = _window_output(description, name, shape, [
        pool_output_size(size, kernel, stride, padding, description.ceil_mode) for size, kernel, stride, padding
        in zip(shape[2:], description.kernel_size, description.stride, description.padding)])
    out_shape = (*shape[:2], out_h, out_w)
    layers.append(Layer(name, description.type, shape, out_shape, 0, 0, 0,
                        prod(out_shape) * prod(description.kernel_size)))
    return out_shape


def _global_pool(description, name, shape, layers):
    if len(shape) != 4:
        raise ValueError(f"count: {name or 'the model'} (GlobalAvgPool2d) expects input_shape (B, C, H, W), "
                         f"got {tuple(shape)}")
    out_shape = tuple(shape[:2])
    layers.append(Layer(name, "GlobalAvgPool2d", shape, out_shape, 0, 0, 0, prod(shape)))
    return out_shape


def _involution(description, name, shape, layers):
    options = description.options
    _check_channels(description, name, shape, options.channels)
    batch, _, out_h, out_w = walk(description.generator(), name, shape, layers)
    kernel_shape = (batch, options.groups, *options.kernel_size, out_h, out_w)
    g = check_geometry(shape, kernel_shape, options.stride, description.padding, options.dilation)
    layers.append(Layer(name, "Involution2d", shape, g.out_shape, 0, g.macs))
    return g.out_shape


def _residual(description, name, shape, layers):
    out_shape = walk(description.main, name, shape, layers)
    identity_shape = shape
    if description.shortcut is not None:
        identity_shape = walk(description.shortcut, _join(name, description.shortcut_name), shape, layers)
    if identity_shape != out_shape:
        raise ValueError(f"count: {name or 'the model'}: residual {out_shape} and shortcut {identity_shape} differ")
    layers.append(Layer(name, "Add", out_shape, out_shape, 0, 0, 0, prod(out_shape)))
    return walk(ReLUDescription(), _join(name, description.relu_name), out_shape, layers)


def _interpolate(description, name, shape, layers):
    """``F.interpolate`` by an integer ``scale_factor``: nearest copies (0 ops), bilinear weighs 4 neighbours
    (4 multiplies + 3 adds per output element)."""
    out_shape = (*shape[:2], *(size * description.scale_factor for size in shape[2:]))
    layers.append(Layer(name, "interpolate", shape, out_shape, 0, 0, 0, description.ops_per_element * prod(out_shape)))
    return out_shape


def _sequence(description, name, shape, layers):
    for child_name, child in description.children:
        shape = walk(child, _join(name, child_name), shape, layers)
    return shape


def _join(name: str, child_name: str) -> str:
    return f"{name}.{child_name}" if name else child_name


HANDLERS = {architecture.Conv: _conv, architecture.ConvTranspose: _conv_transpose, architecture.Linear: _linear,
            architecture.BatchNorm: _batch_norm, ReLUDescription: _relu, architecture.Pool: _pool,
            architecture.GlobalAvgPool: _global_pool, architecture.Involution: _involution,
            architecture.Residual: _residual, architecture.Sequence: _sequence,
            architecture.Interpolate: _interpolate}


def walk(description, name, shape, layers):
    """Append the layers of ``description`` run on an input of ``shape``; return its output shape.

    Composite models (the detectors of ``involution.reference.detection``) walk themselves: their ``walk``.
    """
    handler = HANDLERS.get(type(description))
    if handler is None:
        return description.walk(name, shape, layers)
    return handler(description, name, shape, layers)


def as_description(model):
    """``model`` itself when it is a description (``involution.reference.architecture``), else ``describe(model)``."""
    return model if type(model) in HANDLERS or hasattr(model, "walk") else architecture.describe(model)


def input_channels(description) -> int:
    """Channels (features, for a lone ``Linear``) the first layer of ``description`` expects."""
    while True:
        if isinstance(description, architecture.Sequence):
            description = description.children[0][1]
        elif isinstance(description, architecture.Residual):
            description = description.main
        elif hasattr(description, "backbone"):
            description = description.backbone
        elif isinstance(description, architecture.Involution):
            return description.options.channels
        else:
            for attribute in ("in_channels", "in_features", "channels"):
                if hasattr(description, attribute):
                    return getattr(description, attribute)
            raise TypeError(f"count: cannot tell the input channels of {description.type}; pass input_shape")


def count(model, input_size=(224, 224), batch: int = 1, input_shape=None, name: str = "") -> Report:
    """Count parameters and per-layer work of ``model`` on one input, from shapes alone (no weights, no data).

    Parameters
    ----------
    model : description or reference module
        A description (``describe_model("rednet50")``, ``involution.reference.architecture.rednet(...)``...) or a built
        ``RedNet``, ``ResNet``, ``Bottleneck``, ``Involution2d``, ``Conv2d``... (read with ``describe``).
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

    Raises
    ------
    ValueError
        A size the model would reject: channels other than its first layer's, a kernel larger than the padded
        input, a bad ``input_size`` or ``batch``.
    TypeError
        A module type without a counting rule.
    """
    description = as_description(model)
    if input_shape is None:
        height, width = pair(input_size, "input_size", minimum=1)
        batch = check_int(batch, "batch", minimum=1)
        channels = input_channels(description)
        linear = isinstance(description, architecture.Linear)
        input_shape = (batch, channels) if linear else (batch, channels, height, width)
    input_shape = tuple(check_int(size, "input_shape", minimum=1) for size in input_shape)
    layers: list[Layer] = []
    walk(description, "", input_shape, layers)
    return Report(name or _label(model), input_shape, sum(layer.params for layer in layers), tuple(layers))


def _label(model) -> str:
    if type(model) in HANDLERS or hasattr(model, "walk"):
        return getattr(model, "type", "model")
    return type(model).__name__


# -- the standard variants -----------------------------------------------------------------------------------
DESCRIPTIONS = {"rednet": architecture.rednet, "resnet": architecture.resnet}
INVOLUTION_OPTIONS = ("kernel_size", "group_channels", "reduction", "kernel_gen")


def parse_model_name(model_name: str) -> tuple[str, int]:
    """``"rednet50"`` -> ``("rednet", 50)``; a ValueError listing the valid names otherwise."""
    family = model_name.rstrip("0123456789")
    depth = model_name[len(family):]
    if family not in DESCRIPTIONS or not depth or int(depth) not in STAGE_BLOCKS:
        names = [f"{f}{d}" for f in DESCRIPTIONS for d in STAGE_BLOCKS]
        raise ValueError(f"model must be one of {names}, got {model_name!r}")
    return family, int(depth)


def _options_for(family: str, options: dict) -> dict:
    """ResNet takes no involution options; those are dropped for it."""
    if family == "resnet":
        return {key: value for key, value in options.items() if key not in INVOLUTION_OPTIONS}
    return options


def describe_model(model_name: str, **options):
    """``"rednet50"``, ``"resnet101"``... as a description: shapes only, no weights, any option values.

    ``options`` are the constructor's (``RedNet``'s ``kernel_size``, ``group_channels``, ``num_classes``...),
    checked as the constructor checks them; ResNet ignores the involution options.
    """
    family, depth = parse_model_name(model_name)
    return DESCRIPTIONS[family](depth, **_options_for(family, options))


def build(model_name: str, **options) -> Module:
    """``"rednet50"``, ``"resnet101"``... as a reference model *with weights* (``describe_model`` to count only).

    ResNet takes no involution options; those are dropped for it.
    """
    family, depth = parse_model_name(model_name)
    return {"rednet": RedNet, "resnet": ResNet}[family](depth, **_options_for(family, options))


def standard_reports(family: str = "rednet", input_size=(224, 224), **options) -> dict[str, Report]:
    """Reports of the five standard depths of ``family`` ("rednet" or "resnet"), from shapes alone."""
    return {f"{family}{depth}": count(describe_model(f"{family}{depth}", **options), input_size,
                                      name=f"{family}{depth}") for depth in STAGE_BLOCKS}


def round_as_published(value: float, digits: int = 2, steps: int = 2) -> float:
    """Round half-up to ``digits`` decimals, in ``steps`` (2: first to ``digits + 1`` decimals): how the official
    tables' numbers come out (mmcv prints 3 decimals per layer and 2 in total; the paper's tables keep 2
    (classification) or 1 (detection, segmentation); ``steps=1`` rounds once."""
    value = Decimal(repr(value))
    for places in range(digits + steps - 1, digits - 1, -1):
        value = value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    return float(value)
