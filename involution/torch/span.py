"""``torch.ops.involution.involution2d_span``: an involution layer's span convolution and the op in one pass.

An :class:`~involution.torch.Involution2d` generates its kernel with ``conv2``, a 1x1 convolution (the span ``W0`` of
the paper's kernel generation) from the hidden features ``conv1`` gives, then runs the op on that kernel. This op
does both on the CPU without writing the kernel to memory (``involution.fast.cpu_forward_span``): for inference on
``channels_last`` tensors, where the layer takes it (:meth:`Involution2d.forward <involution.torch.Involution2d>`).
It has no autograd formula: the layer takes the two-step path whenever a derivative is wanted. A fake
implementation gives the output's shape and strides, so ``torch.compile(fullgraph=True)`` keeps the op in its graph.
"""
from __future__ import annotations

import functools

import torch

from involution.spec import Geometry, check_geometry, output_size, pair

DTYPES = (torch.float32, torch.float64)
# Run the pass on torch's own OpenMP threads where torch has them (:func:`torch_openmp`); False: numba's threads.
USE_TORCH_OPENMP = True


def check_span(x, hidden, weight, bias, kernel_size, stride, padding, dilation, shapes=None) -> Geometry:
    """Validate the op's arguments; return the :class:`~involution.spec.Geometry` of the involution it runs.

    Works on real, meta and fake tensors. Raises ``TypeError`` (not a tensor, a dtype other than float32/float64,
    two dtypes, a device other than the CPU) or ``ValueError`` (tensors on two devices, shapes or hyper-parameters
    that do not fit, naming the argument). ``shapes``: the function checking the shapes (default
    :func:`span_geometry`).
    """
    tensors = dict(x=(x, 4, "(B, C, H, W)"), hidden=(hidden, 4, "(B, R, Ho, Wo)"),
                   weight=(weight, 4, "(G*Kh*Kw, R, 1, 1)"), bias=(bias, 1, "(G*Kh*Kw,)"))
    for name, (tensor, ndim, layout) in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
        if tensor.layout != torch.strided or tensor.dtype not in DTYPES:
            raise TypeError(f"{name} must be a dense float32 or float64 tensor, got {tensor.layout} {tensor.dtype}")
        if tensor.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {tensor.dtype}")
        if tensor.device.type not in ("cpu", "meta"):
            raise TypeError(f"{name} must be a CPU tensor (the op has a CPU kernel only), got {tensor.device}")
        if tensor.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {tensor.device}")
        if tensor.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")
    return (shapes or span_geometry)(tuple(x.shape), tuple(hidden.shape), tuple(weight.shape), tuple(bias.shape),
                                     _hashable(kernel_size), _hashable(stride), _hashable(padding), _hashable(dilation))


def _hashable(value):
    """A list hyper-parameter as a tuple (the op's schema gives lists)."""
    return tuple(value) if isinstance(value, list) else value


def span_geometry(x_shape, hidden_shape, weight_shape, bias_shape, kernel_size, stride, padding,
                  dilation) -> Geometry:
    """:func:`check_span`'s checks of the shapes (4-D, 4-D, 4-D and 1-D) and hyper-parameters."""
    kernel_h, kernel_w = pair(kernel_size, "kernel_size", minimum=1)
    stride, padding = pair(stride, "stride", minimum=1), pair(padding, "padding", minimum=0)
    dilation = pair(dilation, "dilation", minimum=1)
    generated, reduced = weight_shape[0], weight_shape[1]
    taps = kernel_h * kernel_w
    if tuple(weight_shape[2:]) != (1, 1) or reduced < 1 or generated % taps or generated == 0:
        raise ValueError(f"weight must be a 1x1 convolution's weight (G*Kh*Kw, R, 1, 1) with Kh*Kw = {taps} and "
                         f"R >= 1, got shape {tuple(weight_shape)}")
    if tuple(bias_shape) != (generated,):
        raise ValueError(f"bias must have shape ({generated},) (weight.shape[0]), got {tuple(bias_shape)}")
    batch, channels, height, width = x_shape
    groups = generated // taps
    if channels % groups:
        raise ValueError(f"weight.shape[0] = G*Kh*Kw = {generated} gives G = {groups} kernel groups, which must "
                         f"divide the C = {channels} channels of x")
    out_h = output_size(height, kernel_h, stride[0], padding[0], dilation[0])
    out_w = output_size(width, kernel_w, stride[1], padding[1], dilation[1])
    if min(out_h, out_w) < 1:
        raise ValueError(f"output size would be {out_h}x{out_w} (< 1): x {height}x{width}, kernel_size "
                         f"{kernel_h}x{kernel_w}, stride {stride}, padding {padding}, dilation {dilation}")
    geometry = check_geometry(tuple(x_shape), (batch, groups, kernel_h, kernel_w, out_h, out_w), stride, padding,
                              dilation)
    if tuple(hidden_shape) != (batch, reduced, out_h, out_w):
        raise ValueError(f"hidden must have shape {(batch, reduced, out_h, out_w)} (x's batch, weight.shape[1] "
                         f"channels, the output's size), got {tuple(hidden_shape)}")
    return geometry


# The same answers for the same concrete shapes and hyper-parameters (errors are raised again each time).
_known_span_geometry = functools.lru_cache(maxsize=256)(span_geometry)


def _output(geometry: Geometry, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(geometry.out_shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


@functools.lru_cache(maxsize=1)
def _torch_openmp_runtime():
    from involution.fast.openmp import runtime_at

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    return runtime_at("libgomp.so.1", loaded_only=True)  # the copy torch's libraries are bound to


def torch_openmp():
    """torch's GNU OpenMP runtime, on whose threads the fused pass runs (``involution.fast.openmp``): the loaded
    ``libgomp.so.1`` torch's libraries use (its Linux wheels ship one) when torch's parallel backend is OpenMP, as an
    ``involution.fast.openmp.Runtime``; None elsewhere, or when :data:`USE_TORCH_OPENMP` is False (then numba's
    threads run it). Either way the result is the same, bit for bit."""
    return _torch_openmp_runtime() if USE_TORCH_OPENMP else None


def _span_forward(x, hidden, weight, bias, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """The op's CPU implementation."""
    from involution.fast import cpu_forward_span

    geometry = check_span(x, hidden, weight, bias, kernel_size, stride, padding, dilation, _known_span_geometry)
    out = _output(geometry, x)
    last = torch.channels_last
    arrays = (x.detach().contiguous(memory_format=last).permute(0, 2, 3, 1).numpy(),
              hidden.detach().contiguous(memory_format=last).permute(0, 2, 3, 1).numpy(),
              weight.detach().reshape(weight.shape[0], weight.shape[1]).contiguous().numpy(),
              bias.detach().contiguous().numpy(), out.permute(0, 2, 3, 1).numpy())
    # arrays made here (check_span checked their shapes); on torch's runtime at most torch's thread count
    cpu_forward_span.launch(arrays, geometry, torch_openmp(), torch.get_num_threads())
    return out


@torch.library.custom_op("involution::involution2d_span", mutates_args=(), device_types="cpu")
def _involution2d_span(x: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       kernel_size: list[int], stride: list[int], padding: list[int],
                       dilation: list[int]) -> torch.Tensor:
    return _span_forward(x, hidden, weight, bias, kernel_size, stride, padding, dilation)


@_involution2d_span.register_fake
def _involution2d_span_fake(x, hidden, weight, bias, kernel_size, stride, padding, dilation):
    return _output(check_span(x, hidden, weight, bias, kernel_size, stride, padding, dilation), x)


def _plain_eager(*tensors) -> bool:
    """Whether calling the op's implementation directly does what dispatching the op would: plain CPU tensors (no
    subclass, none of ``torch.func``'s transforms), no derivative wanted (the op refuses one), no compiler or tracer,
    no dispatch or function mode, no profiler (which should see the op by name). The dispatcher's own cost (a
    Python custom op: about 100 us a call) is then saved."""
    from torch.autograd import forward_ad
    from torch.utils import _python_dispatch

    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # first: what follows is not for dynamo to trace
        return False
    if not all(type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device.type == "cpu" and
               not torch._C._functorch.is_functorch_wrapped_tensor(tensor) for tensor in tensors):
        return False  # a subclass, another device, or a tensor of vmap or grad (torch.func)
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors) or forward_ad._current_level >= 0:
        return False
    return not (_python_dispatch.is_in_torch_dispatch_mode() or torch._C._is_torch_function_mode_enabled()
                or torch.autograd.profiler._is_profiler_enabled)


def involution2d_span(x: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel_size,
                      stride=1, padding=0, dilation=1) -> torch.Tensor:
    """The involution of ``x`` with the kernel ``conv2d(hidden, weight, bias)`` generates, in one pass (CPU).

    ``kernel = conv2d(hidden, weight, bias).view(B, G, Kh, Kw, Ho, Wo)``, then
    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``,
    ``g = c // (C // G)``: what ``Involution2d`` computes from its ``conv2``, without the kernel in memory.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W), float32 or float64, CPU; fastest in ``channels_last`` (others are copied)
    hidden : Tensor, shape (B, R, Ho, Wo), dtype of ``x``
        The span convolution's input (``conv1``'s output, or the pooled input of a linear kernel generation).
    weight : Tensor, shape (G*Kh*Kw, R, 1, 1); ``G`` divides ``C``
    bias : Tensor, shape (G*Kh*Kw,)
    kernel_size, stride, padding, dilation : int or (h, w) pair

    Returns
    -------
    out : Tensor, shape (B, C, Ho, Wo), ``channels_last``, dtype of ``x``. Not differentiable (no autograd
    formula): equal, up to rounding, to ``involution2d(x, kernel, ...)`` on the generated kernel.

    Raises
    ------
    TypeError, ValueError
        As :func:`check_span`, before any kernel runs (also for fake and meta tensors).
    RuntimeError
        A dual tensor (``torch.autograd.forward_ad``) among the inputs; a backward through the result.
    """
    from torch.autograd import forward_ad

    if forward_ad._current_level >= 0 and any(isinstance(tensor, torch.Tensor) and
                                              forward_ad.unpack_dual(tensor).tangent is not None
                                              for tensor in (x, hidden, weight, bias)):
        raise RuntimeError("involution2d_span has no forward-mode derivative (a dual tensor came): run the two steps, "
                           "conv2d then involution2d, or an Involution2d, which takes them when a derivative is wanted")
    arguments = (x, hidden, weight, bias, list(pair(kernel_size, "kernel_size", minimum=1)),
                 list(pair(stride, "stride", minimum=1)), list(pair(padding, "padding", minimum=0)),
                 list(pair(dilation, "dilation", minimum=1)))
    if _plain_eager(*arguments[:4]):
        return _span_forward(*arguments)
    return _involution2d_span(*arguments)
