"""The numba kernels as the PyTorch operators ``torch.ops.involution.involution2d`` and ``involution2d_backward``.

Registered through :mod:`torch.library`, so the op is a first-class citizen of PyTorch:

* autograd, reverse and forward mode: the backward is the registered op ``involution2d_backward``, itself
  differentiable (double backward runs the two ops again), and both ops have a forward-mode rule (the op is
  bilinear: the tangent is ``f(tx, kernel) + f(x, tkernel)``), so ``gradgradcheck``, ``torch.func.jvp``, dual
  numbers (``torch.autograd.forward_ad``), ``jacfwd``, ``jacrev``, ``hessian`` and ``torch.func.grad`` work;
* ``torch.vmap``: a batching rule folds the vmapped dimension into the batch, one kernel call;
* fake and meta tensors: a fake implementation gives the output shape (and raises the same named errors), so
  ``torch.compile(fullgraph=True)``, ``torch.export`` and ``device="meta"`` work without running a kernel;
* ``torch.utils.flop_counter.FlopCounterMode``: ``2*B*C*Kh*Kw*Ho*Wo`` FLOPs for the forward (one multiply and one
  add per tap) and twice that for the backward (``grad_x`` and ``grad_kernel``, each a forward's worth), as torch
  counts a convolution and its backward;
* dtypes: float32 and float64 run the kernels in their own precision; float16 and bfloat16 are computed in float32
  (products accumulated in float32) and rounded once to the input dtype;
* autocast: like ``conv2d`` (on torch's lower-precision list for CPU and CUDA), the op runs in the autocast dtype:
  float32, float16 and bfloat16 inputs are cast to ``torch.get_autocast_dtype(device)``, float64 is left alone.

CPU tensors go to :func:`involution.fast.cpu.run` (the validated level) as NumPy views of new tensors; CUDA tensors
go to :mod:`involution.fast.cuda` through ``__cuda_array_interface__`` on torch's current stream.
"""
from collections.abc import Sequence

import torch
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd import forward_ad
from torch.autograd.function import _SingleLevelFunction
from torch.utils.flop_counter import register_flop_formula

from involution.spec import Geometry, pair
from involution.torch.checks import check_tensors

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, torch.float64)  # the numba kernels' own; the others are computed in float32


def channels_last_forward(x: torch.Tensor, kernel: torch.Tensor) -> bool:
    """Whether the forward runs in the channels-last layout (``involution.fast.cpu_forward_channels_last``, no copies)
    and returns a ``channels_last`` output: a CPU ``x`` that is ``channels_last``-contiguous and not contiguous, and a
    position-major ``kernel`` (memory ``(B, Ho, Wo, G, Kh, Kw)``, what a ``channels_last`` generation convolution gives
    viewed as ``(B, G, Kh, Kw, Ho, Wo)``). The fake implementation decides alike, so both give the same strides."""
    return (x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and kernel.permute(0, 4, 5, 1, 2, 3).is_contiguous())


def _channels_last_output(geometry: Geometry, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(geometry.out_shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def _cpu_call(name, tensors, geometry: Geometry):
    """``name`` ("involution2d" or "involution2d_backward") through ``involution.fast.cpu.run``, the validated level
    (the op checked the tensors): on NumPy views of ``tensors``, into new tensors it returns. A forward on
    channels-last tensors (:func:`channels_last_forward`) runs ``involution.fast.cpu_forward_channels_last`` on
    their memory as it lies."""
    from involution.fast import cpu

    if name == "involution2d" and channels_last_forward(*tensors):
        from involution.fast import cpu_forward_channels_last

        x, kernel = tensors
        out = _channels_last_output(geometry, x)
        cpu_forward_channels_last.run((x.detach().permute(0, 2, 3, 1).numpy(),
                                       kernel.detach().permute(0, 4, 5, 1, 2, 3).numpy(),
                                       out.permute(0, 2, 3, 1).numpy()), geometry)
        return (out,)
    arrays = tuple(tensor.detach().contiguous().numpy() for tensor in tensors)
    if name == "involution2d":
        x, kernel = arrays
        out = torch.empty(geometry.out_shape, dtype=tensors[0].dtype)
        cpu.run("forward", (x, kernel, out.numpy()), geometry)
        return (out,)
    grad_out, x, kernel = arrays
    grad_x = torch.empty(geometry.x_shape, dtype=tensors[0].dtype)
    grad_kernel = torch.empty(geometry.kernel_shape, dtype=tensors[0].dtype)
    cpu.run("grad_x", (grad_out, kernel, grad_x.numpy()), geometry)
    cpu.run("grad_kernel", (grad_out, x, grad_kernel.numpy()), geometry)
    return grad_x, grad_kernel


def _cuda_call(function, tensors, hyper_parameters):
    """``function`` of ``involution.fast.cuda`` on the tensors' device memory, on torch's current stream."""
    from numba import cuda

    device = tensors[0].device
    index = torch.cuda.current_device() if device.index is None else device.index
    with torch.cuda.device(index), cuda.gpus[index]:  # torch's and numba's current device: the tensors'
        stream = cuda.external_stream(torch.cuda.current_stream(index).cuda_stream)
        results = function(*(tensor.detach().contiguous() for tensor in tensors), *hyper_parameters, stream=stream)
    results = results if isinstance(results, tuple) else (results,)
    return tuple(torch.as_tensor(result, device=device) for result in results)


def _run(name: str, tensors, geometry: Geometry) -> tuple[torch.Tensor, ...]:
    """``involution2d`` or ``involution2d_backward`` of the backend of the tensors' device, in the kernels' dtype.

    float16/bfloat16 tensors are widened to float32 for the kernel and its results rounded back once.
    """
    dtype, device = tensors[0].dtype, tensors[0].device
    if device.type == "cuda":
        from involution.fast import cuda as backend
    elif device.type != "cpu":
        raise ValueError(f"x must be on a cpu or cuda device, got {device}")
    if dtype not in KERNEL_DTYPES:
        tensors = tuple(tensor.float() for tensor in tensors)
    results = _cpu_call(name, tensors, geometry) if device.type == "cpu" else \
        _cuda_call(getattr(backend, name), tensors, geometry.hyper_parameters)
    return tuple(result.to(dtype) for result in results)


def _check_backward(grad_out, x, kernel, stride, padding, dilation) -> Geometry:
    """:func:`check_tensors` of ``x, kernel``, then ``grad_out`` against the output they give."""
    geometry = check_tensors(x, kernel, stride, padding, dilation, dtypes=DTYPES)
    if not isinstance(grad_out, torch.Tensor):
        raise TypeError(f"grad_out must be a torch.Tensor (B, C, Ho, Wo), got {type(grad_out).__name__}")
    if grad_out.dtype != x.dtype:
        raise TypeError(f"grad_out must have the dtype of x ({x.dtype}), got {grad_out.dtype}")
    if grad_out.device != x.device:
        raise ValueError(f"grad_out must be on the device of x ({x.device}), got {grad_out.device}")
    if tuple(grad_out.shape) != geometry.out_shape:
        raise ValueError(f"grad_out must have the output shape {geometry.out_shape}, got {tuple(grad_out.shape)}")
    return geometry


# --- the ops --------------------------------------------------------------------------------------------------
_LIBRARY = torch.library.Library("involution", "FRAGMENT")
_LIBRARY.define("involution2d(Tensor x, Tensor kernel, SymInt[] stride, SymInt[] padding, SymInt[] dilation) -> Tensor",
                tags=(torch.Tag.pt2_compliant_tag,))
_LIBRARY.define("involution2d_backward(Tensor grad_out, Tensor x, Tensor kernel, SymInt[] stride, SymInt[] padding, "
                "SymInt[] dilation) -> (Tensor, Tensor)", tags=(torch.Tag.pt2_compliant_tag,))
involution2d_op = torch.ops.involution.involution2d.default
involution2d_backward_op = torch.ops.involution.involution2d_backward.default


def _involution2d_kernel(x, kernel, stride, padding, dilation):
    """The forward op's kernel (CPU and CUDA): checks, then the numba kernels."""
    geometry = check_tensors(x, kernel, stride, padding, dilation, dtypes=DTYPES)
    return _run("involution2d", (x, kernel), geometry)[0]


def _involution2d_fake(x, kernel, stride, padding, dilation):
    geometry = check_tensors(x, kernel, stride, padding, dilation, dtypes=DTYPES)
    if channels_last_forward(x, kernel):
        return _channels_last_output(geometry, x)
    return x.new_empty(geometry.out_shape)


def _involution2d_backward_kernel(grad_out, x, kernel, stride, padding, dilation):
    """The backward op's kernel: ``(grad_x, grad_kernel)``."""
    geometry = _check_backward(grad_out, x, kernel, stride, padding, dilation)
    grad_x, grad_kernel = _run("involution2d_backward", (grad_out, x, kernel), geometry)
    return grad_x, grad_kernel


def _involution2d_backward_fake(grad_out, x, kernel, stride, padding, dilation):
    _check_backward(grad_out, x, kernel, stride, padding, dilation)
    return x.new_empty(x.shape), kernel.new_empty(kernel.shape)


for _name, _kernel, _fake in (("involution2d", _involution2d_kernel, _involution2d_fake),
                              ("involution2d_backward", _involution2d_backward_kernel, _involution2d_backward_fake)):
    _LIBRARY.impl(_name, _kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"involution::{_name}", _fake, lib=_LIBRARY)


# --- autograd: reverse and forward mode -----------------------------------------------------------------------
# Both ops are bilinear: involution2d in (x, kernel); involution2d_backward in (grad_out, kernel) for grad_x and in
# (grad_out, x) for grad_kernel. So every derivative, reverse (vjp) or forward (jvp), is again a call of the two ops.
#
# torch.library.register_autograd registers reverse mode only: an op registered with it passes forward-mode AD
# (torch.func.jvp, dual numbers, jacfwd, hessian) as if it were constant, a silent zero tangent. So the Autograd
# kernel of each op is registered here instead, as torch's own ops have theirs: an autograd.Function with
# ``backward`` and ``jvp``. It is a single-level Function, the kind torch.func uses for a custom Function inside
# its transforms (torch/_functorch/autograd_function.py): the dispatcher calls the Autograd kernel after the
# transform has unwrapped the tensors of its level, so the Function sees plain tensors and records one level.
def _needs_derivatives(*tensors) -> bool:
    """Whether a call must record derivatives: reverse mode (grad enabled, an input requires grad) or forward
    mode (a dual level is open: torch.autograd.forward_ad, or torch.func.jvp which opens one)."""
    return (torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)) \
        or forward_ad._current_level >= 0


class _Involution2dFunction(_SingleLevelFunction):
    """Derivatives of ``involution2d_op``: backward the backward op, tangent ``f(tx, kernel) + f(x, tkernel)``."""

    @staticmethod
    def forward(x, kernel, stride, padding, dilation, keyset):
        return _below_autograd(involution2d_op, keyset, x, kernel, stride, padding, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_inputs(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out):
        x, kernel = ctx.saved_tensors
        grad_x, grad_kernel = involution2d_backward_op(grad_out, x, kernel, *ctx.hyper_parameters)
        return grad_x, grad_kernel, None, None, None, None

    @staticmethod
    def jvp(ctx, tangent_x, tangent_kernel, *_):
        x, kernel = ctx.saved_tensors
        terms = [involution2d_op(tangent_x, kernel, *ctx.hyper_parameters)] if tangent_x is not None else []
        if tangent_kernel is not None:
            terms.append(involution2d_op(x, tangent_kernel, *ctx.hyper_parameters))
        return sum(terms[1:], terms[0])


class _Involution2dBackwardFunction(_SingleLevelFunction):
    """Derivatives of ``involution2d_backward_op`` (double backward, forward over reverse)."""

    @staticmethod
    def forward(grad_out, x, kernel, stride, padding, dilation, keyset):
        return _below_autograd(involution2d_backward_op, keyset, grad_out, x, kernel, stride, padding, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_inputs(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_grad_x, grad_grad_kernel):
        """Derivatives of ``<grad_grad_x, grad_x> + <grad_grad_kernel, grad_kernel>``.

        ``grad_x`` is the adjoint of ``x -> involution2d(x, kernel)`` applied to ``grad_out``, and ``grad_kernel``
        that of ``kernel -> involution2d(x, kernel)``, so the sum equals ``<involution2d(grad_grad_x, kernel) +
        involution2d(x, grad_grad_kernel), grad_out>``: its derivatives are two forwards (for ``grad_out``) and the
        backward op's ``grad_x`` (kernel ``grad_grad_kernel``) and ``grad_kernel`` (input ``grad_grad_x``).
        """
        grad_out, x, kernel = ctx.saved_tensors
        hyper_parameters = ctx.hyper_parameters
        d_grad_out = d_x = d_kernel = None
        if grad_grad_x is not None:
            d_grad_out = involution2d_op(grad_grad_x, kernel, *hyper_parameters)
            d_kernel = involution2d_backward_op(grad_out, grad_grad_x, kernel, *hyper_parameters)[1]
        if grad_grad_kernel is not None:
            term = involution2d_op(x, grad_grad_kernel, *hyper_parameters)
            d_grad_out = term if d_grad_out is None else d_grad_out + term
            d_x = involution2d_backward_op(grad_out, x, grad_grad_kernel, *hyper_parameters)[0]
        return d_grad_out, d_x, d_kernel, None, None, None, None

    @staticmethod
    def jvp(ctx, tangent_grad_out, tangent_x, tangent_kernel, *_):
        """``grad_x`` depends on ``(grad_out, kernel)`` only and ``grad_kernel`` on ``(grad_out, x)``, so the
        tangent is ``backward(t_grad_out, x, kernel) + backward(grad_out, t_x, t_kernel)``."""
        grad_out, x, kernel = ctx.saved_tensors
        terms = []
        if tangent_grad_out is not None:
            terms.append(involution2d_backward_op(tangent_grad_out, x, kernel, *ctx.hyper_parameters))
        if tangent_x is not None or tangent_kernel is not None:
            tangent_x = torch.zeros_like(x) if tangent_x is None else tangent_x
            tangent_kernel = torch.zeros_like(kernel) if tangent_kernel is None else tangent_kernel
            terms.append(involution2d_backward_op(grad_out, tangent_x, tangent_kernel, *ctx.hyper_parameters))
        return tuple(sum(parts[1:], parts[0]) for parts in zip(*terms))


def _save_inputs(ctx, inputs, output):
    *tensors, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)
    ctx.hyper_parameters = (stride, padding, dilation)


def _below_autograd(op, keyset, *arguments):
    """``op`` redispatched past the Autograd key of ``keyset`` (the kernel, or the next torch.func level), with
    reverse and forward gradients enabled for that level, as torch.func's own single-level Functions do: a guard
    that excluded the Autograd key for the rest of the call would hide this op from the outer levels' derivatives
    (``torch.func.jvp`` of ``torch.func.grad``, ``hessian``)."""
    with torch.enable_grad(), forward_ad._set_fwd_grad_enabled(True):
        return op.redispatch(keyset & torch._C._after_autograd_keyset, *arguments)


def _autograd_kernel(op, function):
    """The Autograd kernel of ``op``: ``function`` where derivatives are recorded, else straight below autograd."""

    def kernel(keyset, *arguments):
        if not _needs_derivatives(*arguments[:-3]):
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *arguments)
        with enable_single_level_autograd_function():
            return function.apply(*arguments, keyset)

    return kernel


_LIBRARY.impl("involution2d", _autograd_kernel(involution2d_op, _Involution2dFunction), "Autograd",
              with_keyset=True)
_LIBRARY.impl("involution2d_backward", _autograd_kernel(involution2d_backward_op, _Involution2dBackwardFunction),
              "Autograd", with_keyset=True)


# --- vmap -----------------------------------------------------------------------------------------------------
def _fold_vmap_dimension(info, tensor, dimension):
    """``tensor`` with the vmapped ``dimension`` merged into its batch (first) dimension, vmap-major; a tensor
    not vmapped (``dimension`` None) is repeated ``info.batch_size`` times."""
    tensor = tensor.movedim(dimension, 0) if dimension is not None else tensor.expand(info.batch_size, *tensor.shape)
    return tensor.flatten(0, 1)


def _vmap_rule(op):
    """Batching rule of ``op`` under ``torch.vmap``: the vmapped dimension becomes part of the batch, one call."""

    def rule(info, in_dims, *arguments):
        *tensors, stride, padding, dilation = arguments
        folded = [_fold_vmap_dimension(info, tensor, dimension) for tensor, dimension in zip(tensors, in_dims)]
        batch = folded[0].shape[0] // info.batch_size  # the op's own batch size
        results = op(*folded, stride, padding, dilation)
        if isinstance(results, torch.Tensor):
            return results.unflatten(0, (info.batch_size, batch)), 0
        return tuple(result.unflatten(0, (info.batch_size, batch)) for result in results), (0,) * len(results)

    return rule


torch.library.register_vmap("involution::involution2d", _vmap_rule(involution2d_op), lib=_LIBRARY)
torch.library.register_vmap("involution::involution2d_backward", _vmap_rule(involution2d_backward_op), lib=_LIBRARY)


# --- FLOPs ----------------------------------------------------------------------------------------------------
def _macs(out_shape, kernel_shape) -> int:
    """Multiply-adds of one forward: ``B*C*Ho*Wo * Kh*Kw`` (``out_shape`` (B, C, Ho, Wo), ``kernel_shape`` 6-D)."""
    batch, channels, out_h, out_w = out_shape
    return batch * channels * out_h * out_w * kernel_shape[2] * kernel_shape[3]


@register_flop_formula(torch.ops.involution.involution2d)
def _forward_flops(x_shape, kernel_shape, *hyper_parameters, out_shape=None, **kwargs) -> int:
    """``2 * B*C*Ho*Wo * Kh*Kw``: a multiply and an add per tap of each output element."""
    return 2 * _macs(out_shape, kernel_shape)


@register_flop_formula(torch.ops.involution.involution2d_backward)
def _backward_flops(grad_out_shape, x_shape, kernel_shape, *hyper_parameters, out_shape=None, **kwargs) -> int:
    """``grad_x`` and ``grad_kernel``, each with the forward's multiply-adds: ``4 * B*C*Ho*Wo * Kh*Kw``."""
    return 4 * _macs(grad_out_shape, kernel_shape)


# --- autocast -------------------------------------------------------------------------------------------------
def _autocast_kernel(device_type: str):
    """The op under ``torch.autocast(device_type)``: conv2d's rule, inputs cast to the autocast dtype (not float64)."""

    def kernel(x, kernel, stride, padding, dilation):
        dtype = torch.get_autocast_dtype(device_type)
        x, kernel = (tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor
                     for tensor in (x, kernel))
        with torch.autocast(device_type, enabled=False):
            return involution2d_op(x, kernel, stride, padding, dilation)

    return kernel


for _device_type, _key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
    _LIBRARY.impl("involution2d", _autocast_kernel(_device_type), _key)


# --- the front ------------------------------------------------------------------------------------------------
def _front_arguments(tensors: dict, stride, padding, dilation) -> tuple:
    """The op's arguments: ``tensors`` checked to be tensors (named TypeError), hyper-parameters as ``(h, w)``."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    return (*tensors.values(), pair(stride, "stride", minimum=1), pair(padding, "padding", minimum=0),
            pair(dilation, "dilation", minimum=1))


def involution2d(x: torch.Tensor, kernel: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Differentiable involution of torch tensors with the numba kernels (CPU, or CUDA via ``involution.fast.cuda``).

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``,
    ``g = c // (C // G)``. Calls the registered op ``torch.ops.involution.involution2d`` (see the module docstring:
    autograd, ``torch.compile``, ``torch.export``, fake/meta tensors, ``FlopCounterMode``, autocast).

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W), float32, float64, float16 or bfloat16
    kernel : Tensor, shape (B, G, Kh, Kw, Ho, Wo), dtype and device of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair

    Returns
    -------
    out : Tensor, shape (B, C, Ho, Wo), dtype and device of ``x``; gradients flow to ``x`` and ``kernel``.
    float16/bfloat16: computed in float32 and rounded once.

    Raises
    ------
    TypeError, ValueError
        As :func:`involution.torch.checks.check_tensors` (before any kernel runs, also for fake and meta tensors).
    """
    return involution2d_op(*_front_arguments(dict(x=x, kernel=kernel), stride, padding, dilation))


def involution2d_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, stride=1, padding=0,
                          dilation=1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_x, grad_kernel)`` of :func:`involution2d` for ``grad_out``: the registered backward op.

    Parameters
    ----------
    grad_out : Tensor, shape (B, C, Ho, Wo), dtype and device of ``x``
    x, kernel, stride, padding, dilation : as in :func:`involution2d`

    Returns
    -------
    grad_x : Tensor, shape (B, C, H, W)
    grad_kernel : Tensor, shape (B, G, Kh, Kw, Ho, Wo)

    Raises
    ------
    TypeError, ValueError
        As :func:`involution2d`; also ``grad_out`` not a tensor, or of the wrong dtype, device or shape.
    """
    return involution2d_backward_op(*_front_arguments(dict(grad_out=grad_out, x=x, kernel=kernel), stride, padding,
                                                      dilation))


from involution.torch import export as _export  # noqa: E402,F401  (registers the op's ONNX translations)
