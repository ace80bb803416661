"""The rules of the involution op, once: option checks, the output-size rule, the group rule, "same" padding.

This module is the bottom of the import graph: it imports nothing from the project, and every backend, layer,
counter, suite module and benchmark uses it. Every backend (the NumPy reference, the numba CPU and CUDA kernels,
the torch ops, the conformance adapters) validates through :func:`check_involution2d` (or
:func:`check_geometry`) before it computes, so bad input gets the same clear error everywhere.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Largest padded extent (H + 2*ph, and each of stride, padding, dilation): the compiled kernels multiply two
# such numbers, which must fit in int64. Larger values get a named ValueError instead of an overflow.
MAX_EXTENT = 2**31 - 1


def check_int(value, name: str, *, minimum: int, maximum: int = MAX_EXTENT) -> int:
    """``value`` as an int in ``[minimum, maximum]``; a named ``TypeError`` (not an integer, or a bool) or
    ``ValueError`` (out of range) otherwise. Never truncates: ``2.0``, ``(2, 2)`` and ``True`` are errors."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def pair(value, name: str, *, minimum: int, maximum: int = MAX_EXTENT) -> tuple[int, int]:
    """``value`` (an int, or an ``(h, w)`` pair of ints) as an ``(h, w)`` pair, each in ``[minimum, maximum]``.

    Raises a named ``TypeError``/``ValueError`` for anything else, never truncates: a triple is an error.
    """
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
    for item in items:
        if not is_integer(item):
            raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if max(items) > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return operator.index(items[0]), operator.index(items[1])


def is_integer(value) -> bool:
    """Whether ``value`` is of an integer type (``__index__``), bools excluded; its value is not asked for, so
    torch's symbolic sizes stay symbolic. Arrays and tensors are not integers, whatever their shape (NumPy's and
    torch's have ``__index__`` for one element): ``np.array([2, 2])`` or ``torch.tensor(2)`` as an option is an
    error, not a value. NumPy integer scalars (``np.int64(2)``) are integers."""
    if isinstance(value, (bool, np.bool_)) or (hasattr(value, "shape") and not isinstance(value, np.generic)):
        return False
    return hasattr(type(value), "__index__")


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis: ``(size + 2*padding - dilation*(kernel-1) - 1) // stride + 1``.

    The one output-size rule of the project (same as ``torch.nn.functional.unfold`` and ``conv2d``).
    May be < 1, meaning the window does not fit; callers decide whether that is an error. Each argument is
    checked (:func:`check_int`): ``size >= 0``, ``kernel, stride, dilation >= 1``, ``padding >= 0``.
    """
    size, kernel = check_int(size, "size", minimum=0), check_int(kernel, "kernel", minimum=1)
    stride, padding = check_int(stride, "stride", minimum=1), check_int(padding, "padding", minimum=0)
    dilation = check_int(dilation, "dilation", minimum=1)
    return _output_size(size, kernel, stride, padding, dilation)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """:func:`output_size` of arguments already checked (:func:`check_geometry`'s, on every call of the op)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel_size, dilation=1) -> tuple[int, int]:
    """Padding ``dilation * (K - 1) // 2`` per axis: keeps the size at stride 1 for odd ``K`` (RedNet's layers)."""
    kernel_h, kernel_w = pair(kernel_size, "kernel_size", minimum=1)
    dilation_h, dilation_w = pair(dilation, "dilation", minimum=1)
    return dilation_h * (kernel_h - 1) // 2, dilation_w * (kernel_w - 1) // 2


def group_of_channel(channel, group_channels):
    """Group of ``channel`` when groups are contiguous blocks of ``group_channels = C // G`` (the official layout)."""
    return channel // group_channels


@dataclass(frozen=True)
class Geometry:
    """Every size of one involution call, validated.

    ``x (batch, channels, height, width)``, ``kernel (batch, groups, kernel_h, kernel_w, out_h, out_w)``.
    """

    batch: int
    channels: int
    groups: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    out_h: int
    out_w: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def group_channels(self) -> int:
        """Channels per group, ``C // G``."""
        return self.channels // self.groups

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward op: ``B * C * Kh * Kw * Ho * Wo``."""
        return self.batch * self.channels * self.kernel_h * self.kernel_w * self.out_h * self.out_w

    @property
    def hyper_parameters(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """``(stride, padding, dilation)``, each an ``(h, w)`` pair: the op's arguments after the arrays."""
        return self.stride, self.padding, self.dilation

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int, int, int]:
        return (self.batch, self.groups, self.kernel_h, self.kernel_w, self.out_h, self.out_w)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.out_h, self.out_w)


def check_float_layout(value, name: str, ndim: int, layout: str) -> None:
    """Check that ``value`` (anything with a NumPy ``dtype`` and a ``shape``) is float32/float64 and ``ndim``-D.

    Works on host and device arrays alike (e.g. numba device arrays), so devices validate without a copy.
    """
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
    if len(value.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(value.shape)}")


def as_float_array(value, name: str, ndim: int, layout: str) -> np.ndarray:
    """``value``, an ndarray of float32/float64 with ``ndim`` dimensions, else a named error.

    Anything else is a ``TypeError``, never converted: a masked array would lose its mask, and a torch tensor its
    autograd graph (torch tensors go to a torch backend, :mod:`involution.backends`).
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain NumPy array {layout}, got a masked array (its mask would be "
                        f"ignored; pass {name}.filled(value))")
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array {layout}, got {type(value).__module__}.{type(value).__name__} "
                        f"(convert it with np.asarray, or use a backend of its framework)")
    check_float_layout(value, name, ndim, layout)
    return value


def check_geometry(x_shape, kernel_shape, stride, padding, dilation) -> Geometry:
    """Validate the sizes of an involution call given only shapes; return its :class:`Geometry`."""
    stride = pair(stride, "stride", minimum=1)
    padding = pair(padding, "padding", minimum=0)
    dilation = pair(dilation, "dilation", minimum=1)
    if not all(type(size) is int for size in (*x_shape, *kernel_shape)):  # arrays' shapes are; callers' may not be
        x_shape, kernel_shape = _integer_shape(x_shape, "x"), _integer_shape(kernel_shape, "kernel")
    batch, channels, height, width = x_shape
    k_batch, groups, kernel_h, kernel_w, k_out_h, k_out_w = kernel_shape
    if batch < 0:
        raise ValueError(f"x batch size must be >= 0, got shape {tuple(x_shape)}")
    if min(x_shape[1:]) < 1:  # an empty batch is allowed: empty output, as torch.nn.functional.conv2d
        raise ValueError(f"x must have no empty dimension other than the batch, got shape {tuple(x_shape)}")
    if min(kernel_shape[1:]) < 1:
        raise ValueError(f"kernel must have no empty dimension other than the batch, got shape {tuple(kernel_shape)}")
    for axis, size, pad in (("height", height, padding[0]), ("width", width, padding[1])):
        if size + 2 * pad > MAX_EXTENT:
            raise ValueError(f"padded x {axis} (size + 2*padding = {size + 2 * pad}) must be <= {MAX_EXTENT}")
    if k_batch != batch:
        raise ValueError(f"kernel batch size {k_batch} does not match x batch size {batch}")
    if channels % groups:
        raise ValueError(f"kernel groups G={groups} (kernel.shape[1]) must divide x channels C={channels}")
    out_h = _output_size(height, kernel_h, stride[0], padding[0], dilation[0])
    out_w = _output_size(width, kernel_w, stride[1], padding[1], dilation[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"output size would be {out_h}x{out_w} (< 1): input {height}x{width}, kernel {kernel_h}x{kernel_w}, "
            f"stride {stride}, padding {padding}, dilation {dilation}"
        )
    if (k_out_h, k_out_w) != (out_h, out_w):
        raise ValueError(
            f"kernel spatial size must equal the output size {out_h}x{out_w} "
            f"(input {height}x{width}, kernel {kernel_h}x{kernel_w}, stride {stride}, padding {padding}, "
            f"dilation {dilation}), got kernel shape {tuple(kernel_shape)}"
        )
    return Geometry(batch, channels, groups, height, width, kernel_h, kernel_w, out_h, out_w,
                    stride, padding, dilation)


def _integer_shape(shape, name: str) -> tuple:
    """``shape`` with NumPy integers as ints; a named ``TypeError`` for an entry that is not an integer (a bool, a
    float). Other integer types pass as they are, without asking for their value: torch's symbolic sizes
    (``torch.export`` with a dynamic batch) stay symbolic; the sizes themselves are checked by the caller."""
    for size in shape:
        if not is_integer(size):
            detail = repr(size) if isinstance(size, (bool, np.bool_)) else f"{type(size).__name__} {size!r}"
            raise TypeError(f"{name} shape entry must be an int, got {detail}")
    return tuple(int(size) if isinstance(size, np.integer) else size for size in shape)


def check_involution2d(x, kernel, stride=1, padding=0, dilation=1, *, as_array=as_float_array):
    """Validate the arguments of ``involution2d``; return ``(x, kernel, geometry)`` as float ndarrays.

    Raises ``TypeError`` for non-float dtypes or mismatched dtypes and ``ValueError`` for bad shapes or
    hyper-parameters, naming the argument, what was expected and what came. ``as_array`` converts and
    checks each array (signature of :func:`as_float_array`); a device backend passes its own.
    """
    x = as_array(x, "x", 4, "(B, C, H, W)")
    kernel = as_array(kernel, "kernel", 6, "(B, G, Kh, Kw, Ho, Wo)")
    if x.dtype != kernel.dtype:
        raise TypeError(f"x and kernel must have the same dtype, got x {x.dtype} and kernel {kernel.dtype}")
    geometry = check_geometry(tuple(x.shape), tuple(kernel.shape), stride, padding, dilation)
    return x, kernel, geometry


def check_involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1, *,
                                as_array=as_float_array):
    """Validate the arguments of ``involution2d_backward``; return ``(grad_out, x, kernel, geometry)``."""
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation, as_array=as_array)
    grad_out = as_array(grad_out, "grad_out", 4, "(B, C, Ho, Wo)")
    if grad_out.dtype != x.dtype:
        raise TypeError(f"grad_out must have the dtype of x ({x.dtype}), got {grad_out.dtype}")
    if tuple(grad_out.shape) != geometry.out_shape:
        raise ValueError(f"grad_out must have the output shape {geometry.out_shape}, got {tuple(grad_out.shape)}")
    return grad_out, x, kernel, geometry
