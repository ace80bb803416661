"""RedNet and ResNet as ``torch.nn.Module`` trees: the PyTorch product, twin of the NumPy reference network.

Same constructor arguments and the same ``state_dict`` keys as the NumPy reference, which are the official
mmcls keys (``backbone.stem.1.conv2.conv.bias``, ``backbone.layer1.0.conv2.conv1.bn.running_mean``,
``head.fc.weight``...), so an official checkpoint loads without renaming. Built from standard torch layers;
the involution op is a torch backend of :mod:`involution.backends`: ``"fast"`` (the numba kernels,
:mod:`involution.torch.ops`) or ``"taps"`` (plain PyTorch, :mod:`involution.torch.taps`); the default is the
fastest that imports here.

One deliberate difference from the official code: the kernel-generation pool of a strided involution is
``nn.AvgPool2d(stride, stride, ceil_mode=True)``. The official floor-mode pool gives ``H // s`` rows while the
strided involution gives ``ceil(H / s)``, so the official layer breaks for odd sizes; for even sizes both agree.
It stays exactly ``nn.AvgPool2d`` (not a faster subclass): mmcv's FLOPs counter, which gives the published figures,
recognises layers by exact type.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from involution import backends
from involution.options import EXPANSION, check_classifier_options, check_involution_options, stage_blocks_for


def _involution_function(backend: str | None):
    """``(name, involution2d)`` of torch backend ``backend`` (``None``: the fastest available), imported on first use."""
    name = backends.default("torch") if backend is None else backend
    return name, backends.load(name, "torch").involution2d


class ConvModule(nn.Sequential):
    """Conv2d, then optional BatchNorm2d and ReLU: mmcv's ``ConvModule`` (children ``conv``, ``bn``, ``activate``).

    The conv has a bias exactly when there is no norm (mmcv's ``bias="auto"``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, norm=True, activate=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_channels)
        if activate:
            self.activate = nn.ReLU()


class Involution2d(nn.Module):
    """Involution layer: a kernel generated from the input, then ``involution2d`` with it.

    Parameters
    ----------
    channels : int
        ``C``, in and out channels.
    kernel_size : int or (h, w) pair of ints
        ``(Kh, Kw)``, odd; padding ``dilation * (K - 1) // 2`` keeps ``H`` at stride 1.
    stride, dilation : int or (h, w) pair of ints
    group_channels : int or "all"
        Channels sharing one kernel; ``G = C // group_channels`` groups ("all": one group).
    reduction : int
        The bottleneck generator's ``C -> C // reduction`` squeeze.
    kernel_gen : {"bottleneck", "linear"}
        "bottleneck": ``conv1`` (1x1, BN, ReLU) then ``conv2`` (1x1 with bias to ``Kh*Kw*G``); "linear": ``conv2`` only.
    backend : {"fast", "taps"} or None
        A torch backend of :mod:`involution.backends`; ``None``: ``"fast"`` where numba imports, else ``"taps"``.

    Attribute ``fuse_span`` (default True): with the ``"fast"`` backend, a float32 or float64 CPU ``x`` in
    ``channels_last`` and no derivative wanted (inference), ``conv2`` and the op run as one pass,
    :func:`involution.torch.span.involution2d_span`, which never writes the generated kernel to memory; the result
    equals the two-step path's up to rounding. The two steps run instead under ``torch.func.vmap`` or autocast, and
    when ``conv2`` is not the plain 1x1 convolution with bias it is built as (hooks, a replaced or subclassed
    convolution: the fused pass reads its weight and bias and does not call it). Set it False for the two steps.

    Shapes: x ``(B, C, H, W)`` -> ``(B, C, ceil(H / sh), ceil(W / sw))``. Options are checked by
    :func:`involution.reference.involution_layer.check_involution_options` (the NumPy layer's checks);
    ``kernel_size``, ``stride``, ``dilation`` and ``padding`` are stored as ``(h, w)`` pairs.
    """

    def __init__(self, channels, kernel_size=7, stride=1, group_channels=16, reduction=4, kernel_gen="bottleneck",
                 dilation=1, backend=None):
        super().__init__()
        options = check_involution_options(channels, kernel_size, stride, group_channels, reduction, kernel_gen,
                                           dilation)
        self.channels, self.kernel_size, self.stride, self.dilation = (options.channels, options.kernel_size,
                                                                       options.stride, options.dilation)
        self.padding = options.padding
        self.group_channels, self.groups = options.group_channels, options.groups
        self.reduction, self.kernel_gen = options.reduction, options.kernel_gen
        self.set_backend(backend)
        if options.strided:
            self.avgpool = nn.AvgPool2d(options.stride, options.stride, ceil_mode=True)
        if options.kernel_gen == "bottleneck":
            self.conv1 = ConvModule(options.channels, options.hidden, 1)
        self.conv2 = ConvModule(options.hidden, options.taps, 1, norm=False, activate=False)
        self.fuse_span = True

    def set_backend(self, backend: str | None) -> None:
        """Use torch backend ``backend`` ("fast", "taps"; ``None``: the fastest available) for the op from now on."""
        self.backend, self._involution2d = _involution_function(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.avgpool(x) if "avgpool" in self._modules else x
        hidden = self.conv1(pooled) if self.kernel_gen == "bottleneck" else pooled
        if self._spans_in_one_pass(x, hidden):
            from .span import involution2d_span

            conv = self.conv2.conv
            return involution2d_span(x, hidden, conv.weight, conv.bias, self.kernel_size, self.stride, self.padding,
                                     self.dilation)
        weight = self.conv2(hidden)
        batch, _, out_h, out_w = weight.shape
        kernel = weight.view(batch, self.groups, *self.kernel_size, out_h, out_w)
        return self._involution2d(x, kernel, self.stride, self.padding, self.dilation)

    def _spans_in_one_pass(self, x: torch.Tensor, hidden: torch.Tensor) -> bool:
        """Whether ``conv2`` and the op run as one pass (see ``fuse_span``): inference on CPU ``channels_last``, with
        ``conv2`` the plain ``ConvModule`` of a 1x1 convolution with bias whose forward nothing changes (no hooks, no
        subclass forward: the fused pass reads its weight and bias and does not call it)."""
        if not (getattr(self, "fuse_span", True) and self.backend == "fast" and x.device.type == "cpu" and
                x.dtype in (torch.float32, torch.float64) and hidden.dtype == x.dtype):
            return False
        if torch._C._functorch.is_batchedtensor(x) or torch.is_autocast_enabled("cpu"):
            return False  # vmap (layout queries fail on batched tensors); autocast (the two steps cast, this does not)
        module, conv = self.conv2, getattr(self.conv2, "conv", None)
        if type(module) is not ConvModule or len(module) != 1 or type(conv) not in (nn.Conv2d, OneDNNConv2d) or \
                conv.bias is None or any(m._forward_hooks or m._forward_pre_hooks for m in (module, conv)) or \
                nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return False
        if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            return False
        from torch.autograd import forward_ad

        wanted = torch.is_grad_enabled() and (x.requires_grad or hidden.requires_grad or
                                              any(p.requires_grad for p in conv.parameters()))
        return not wanted and forward_ad._current_level < 0


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, mixer, 1x1, residual add); the mixer is an involution or a 3x3 conv.

    ``in_channels -> out_channels`` with ``mid = out_channels // expansion``; the mixer carries the stride
    (pytorch style). ``downsample`` (1x1 conv with stride, BN) when the shape changes. ``involution_options``
    (``kernel_size, group_channels, reduction, kernel_gen, dilation, backend``) go to the involution and are
    ignored by the conv mixer. Three ReLU children as in the reference, so hooks see the same names.
    """

    def __init__(self, in_channels, out_channels, stride=1, expansion=EXPANSION, mixer="involution",
                 **involution_options):
        super().__init__()
        mid = out_channels // expansion
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        if mixer == "involution":
            self.conv2 = Involution2d(mid, stride=stride, **involution_options)
        elif mixer == "conv":
            self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        else:
            raise ValueError(f"mixer must be 'involution' or 'conv', got {mixer!r}")
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _stages(stage_blocks, stem_channels, base_channels, **block_args) -> list[nn.Sequential]:
    """The residual stages (stride 1, then 2), each doubling the width of the one before."""
    stages, in_channels, out_channels = [], stem_channels, base_channels * EXPANSION
    for index, blocks in enumerate(stage_blocks):
        stride = 1 if index == 0 else 2
        layers = [Bottleneck(in_channels, out_channels, stride, **block_args)]
        layers += [Bottleneck(out_channels, out_channels, 1, **block_args) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
        in_channels, out_channels = out_channels, out_channels * 2
    return stages


class _Backbone(nn.Module):
    """A container with the stages ``layer1``..``layerN`` run in order after its stem."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem_forward(x))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return x


class RedNetBackbone(_Backbone):
    """RedNet's backbone: the involution stem, a 3x3/2 max-pool and four stages of involution bottlenecks."""

    def __init__(self, stage_blocks, kernel_size, group_channels, reduction, kernel_gen, in_channels,
                 stem_channels, base_channels, backend):
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(
            ConvModule(in_channels, half, 3, stride=2, padding=1),
            Involution2d(half, 3, 1, group_channels, reduction, kernel_gen, backend=backend),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            ConvModule(half, stem_channels, 3, padding=1),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.num_stages = len(stage_blocks)
        stages = _stages(stage_blocks, stem_channels, base_channels, mixer="involution", kernel_size=kernel_size,
                         group_channels=group_channels, reduction=reduction, kernel_gen=kernel_gen,
                         backend=backend)
        for index, stage in enumerate(stages):
            self.add_module(f"layer{index + 1}", stage)

    def stem_forward(self, x):
        return self.stem(x)


class ResNetBackbone(_Backbone):
    """ResNet's backbone: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool and four stages of 3x3-conv bottlenecks."""

    def __init__(self, stage_blocks, in_channels, stem_channels, base_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.num_stages = len(stage_blocks)
        for index, stage in enumerate(_stages(stage_blocks, stem_channels, base_channels, mixer="conv")):
            self.add_module(f"layer{index + 1}", stage)

    def stem_forward(self, x):
        return self.relu(self.bn1(self.conv1(x)))


class GlobalAvgPool2d(nn.Module):
    """``(B, C, H, W) -> (B, C)``: mmcls' ``GlobalAveragePooling`` neck (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class LinearHead(nn.Module):
    """mmcls' ``LinearClsHead``: one ``fc`` layer to the class scores."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _Classifier(nn.Module):
    """``head(neck(backbone(x)))``: mmcls' ``ImageClassifier``."""

    def _finish(self, backbone, stage_blocks, base_channels, num_classes, dtype):
        self.backbone = backbone
        self.neck = GlobalAvgPool2d()
        self.head = LinearHead(base_channels * EXPANSION * 2 ** (len(stage_blocks) - 1), num_classes)
        self.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, np.dtype(dtype).name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))


class RedNet(_Classifier):
    """RedNet classifier; arguments as in ``involution.reference.rednet.RedNet``, plus ``backend``.

    ``x (B, in_channels, H, W) -> scores (B, num_classes)``. ``seed`` seeds torch's default initialisation
    (in a forked RNG: the global torch RNG is left as it was).
    """

    def __init__(self, depth=50, num_classes=1000, kernel_size=7, group_channels=16, reduction=4,
                 kernel_gen="bottleneck", in_channels=3, stem_channels=64, base_channels=64, stage_blocks=None,
                 dtype=torch.float32, seed=0, backend=None):
        super().__init__()
        stage_blocks = stage_blocks_for(depth, stage_blocks)
        check_classifier_options(num_classes, stem_channels, base_channels, seed, even_stem=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = RedNetBackbone(stage_blocks, kernel_size, group_channels, reduction, kernel_gen, in_channels,
                                      stem_channels, base_channels, backend)
            self._finish(backbone, stage_blocks, base_channels, num_classes, dtype)

    def set_backend(self, backend: str | None) -> None:
        """Switch every involution layer to torch backend ``backend`` ("fast", "taps"; ``None``: the fastest)."""
        _involution_function(backend)
        for module in self.modules():
            if isinstance(module, Involution2d):
                module.set_backend(backend)


class ResNet(_Classifier):
    """ResNet classifier with bottleneck blocks (the convolution baseline of the RedNet tables)."""

    def __init__(self, depth=50, num_classes=1000, in_channels=3, stem_channels=64, base_channels=64,
                 stage_blocks=None, dtype=torch.float32, seed=0):
        super().__init__()
        stage_blocks = stage_blocks_for(depth, stage_blocks)
        check_classifier_options(num_classes, stem_channels, base_channels, seed, even_stem=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = ResNetBackbone(stage_blocks, in_channels, stem_channels, base_channels)
            self._finish(backbone, stage_blocks, base_channels, num_classes, dtype)


def _conv_batch_norm_pairs(module: nn.Module):
    """``(parent, conv name, bn name)`` of each BatchNorm2d of ``module``'s own children that normalises the output
    of a Conv2d child and nothing else: ``ConvModule`` and ``downsample`` (``Sequential``), the bottleneck's
    ``conv1/bn1``, ``conv3/bn3`` and (conv mixer) ``conv2/bn2``, ResNet's stem ``conv1/bn1``. The BN after an
    involution (``bn2`` of an involution bottleneck, the RedNet stem's ``2``) is not one: it stays."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            if isinstance(module._modules[conv_name], nn.Conv2d) and isinstance(module._modules[bn_name],
                                                                                  nn.BatchNorm2d):
                yield module, conv_name, bn_name
    elif isinstance(module, Bottleneck):
        yield module, "conv1", "bn1"
        if isinstance(module.conv2, nn.Conv2d):
            yield module, "conv2", "bn2"
        yield module, "conv3", "bn3"
    elif isinstance(module, ResNetBackbone):
        yield module, "conv1", "bn1"


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm2d that follows a Conv2d folded into that convolution.

    ``conv -> bn`` becomes one conv with weight ``w * gamma / sqrt(var + eps)`` and bias ``(b - mean) * gamma /
    sqrt(var + eps) + beta`` (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`), the BN child an ``nn.Identity``:
    the same function in eval mode up to float rounding, one pass over the activations fewer per BN. Offered to
    RedNet and ResNet alike (``python -m involution.benchmarks.networks``). RedNet keeps the BN that follows each
    involution (its scale is per channel, the involution kernel per group of channels, so it folds into neither).

    Parameters
    ----------
    model : RedNet, ResNet or any module built from this module's blocks, in eval mode

    Returns
    -------
    A new module in eval mode (``model`` is left as it was). Its ``state_dict`` has no keys for the folded BNs:
    fold after loading a checkpoint, not before.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``.
    ValueError
        ``model`` is in training mode (BN then normalises with batch statistics, which no fixed weight can fold).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()) to fold its batch norms, got training mode")
    folded = copy.deepcopy(model)
    for module in list(folded.modules()):
        for parent, conv_name, bn_name in list(_conv_batch_norm_pairs(module)):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return folded.eval()


class OneDNNConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose CPU float32 forward always takes oneDNN's convolution (``aten::mkldnn_convolution``).

    PyTorch's own dispatch sends some convolutions to its im2col + GEMM path (``aten::_slow_conv2d_forward`` in
    ``torch.profiler``): on one thread every 1x1 stride-1 convolution of ResNet-50 and RedNet-50 at batch 1 and 8,
    on two threads RedNet-50's smallest 1x1 convolutions at batch 1. Whether oneDNN is faster for a network depends
    on the shapes and the memory format, so the network benchmark offers it as a configuration (``python -m
    involution.benchmarks.networks``, the ``+onednn`` rows). The same function (oneDNN and the GEMM path agree to
    float rounding); autograd works through it. Other devices, dtypes and padding modes, and ``torch.compile``
    (which cannot trace oneDNN's op and picks its own convolutions), take ``nn.Conv2d``'s forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.padding_mode != "zeros" or \
                isinstance(self.padding, str) or torch.compiler.is_compiling():  # oneDNN's op has no fake tensors
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def onednn_convolutions(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Conv2d`` an :class:`OneDNNConv2d` (the same parameters; changed in place).

    A speed option for CPU inference and training, offered to RedNet and ResNet alike (``python -m
    involution.benchmarks.networks``). The changed modules are no longer exactly ``nn.Conv2d``: FLOP counters that
    match layers by exact type (mmcv's) do not count them, so count on the unchanged model.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = OneDNNConv2d
    return model
