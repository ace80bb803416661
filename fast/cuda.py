"""The involution op on NVIDIA GPUs through numba.cuda: validation, host/device transfers and kernel dispatch.

NumPy in, NumPy out: the arrays are copied to the GPU and the results back. Device arrays in (anything with
``__cuda_array_interface__``: numba device arrays, CuPy arrays, torch CUDA tensors), numba device arrays
out: nothing is copied and the kernels run asynchronously on ``stream`` (a numba stream, e.g.
``numba.cuda.external_stream(torch.cuda.current_stream().cuda_stream)``; default: the default stream).
With ``stream=None`` numba first waits for the stream a ``__cuda_array_interface__`` producer names; with a
stream, ordering the producers before it is the caller's job. Device inputs must live on numba's current
device (``with numba.cuda.gpus[i]:`` selects another) and be C-contiguous: others get a ValueError (call
``.contiguous()`` first), so no hidden copy or slow strided kernel ever runs. Under numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``) the same code runs on the CPU, one Python thread per CUDA thread. Without
either, importing this module raises ImportError saying so (the conformance suite then skips the backend).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from involution.spec import (Geometry, as_float_array, check_float_layout, check_involution2d,
                             check_involution2d_backward)

from . import cuda_kernels
from .cuda_kernels import VERSIONS

KINDS = ("forward", "grad_x", "grad_kernel")

if not cuda.is_available():
    raise ImportError("involution.fast.cuda needs a CUDA GPU visible to numba (numba.cuda.is_available() is "
                      "False); set NUMBA_ENABLE_CUDASIM=1 to run the kernels on numba's CPU simulator")


def is_simulator() -> bool:
    """True when numba runs CUDA kernels on its CPU simulator (``NUMBA_ENABLE_CUDASIM=1``), not on a GPU."""
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def choose_version(name: str, geometry: Geometry) -> int:
    """The version of kernel ``name`` ("forward", "grad_x", "grad_kernel") that runs for ``geometry``.

    2 (tiles staged in shared memory) when ``cuda_kernels.plan_tiles`` finds a tile whose float64 staging fits
    ``SHARED_BYTES`` (so the choice is the same for both dtypes), else 1. The same name and signature as
    ``involution.fast.cpu.choose_version``.
    """
    if name not in KINDS:
        raise ValueError(f"kernel name must be one of {KINDS}, got {name!r}")
    return 2 if cuda_kernels.plan_tiles(name, geometry, np.dtype(np.float64).itemsize) is not None else 1


def versions_for(geometry: Geometry) -> dict[str, int]:
    """``{"forward": v, "grad_x": v, "grad_kernel": v}``: the versions :func:`involution2d` and
    :func:`involution2d_backward` run for ``geometry`` with ``version=None``."""
    return {name: choose_version(name, geometry) for name in KINDS}


def involution2d(x, kernel, stride=1, padding=0, dilation=1, *, stream=None, version=None):
    """Involution on the GPU; the semantics and errors of ``involution.reference.involution2d``.

    ``out[b, c, i, j] = sum_{u, v} kernel[b, g, u, v, i, j] * x_pad[b, c, i*sh + u*dh, j*sw + v*dw]``,
    ``g = c // (C // G)``.

    Parameters
    ----------
    x : ndarray or device array, shape (B, C, H, W), float32 or float64
    kernel : ndarray or device array, shape (B, G, Kh, Kw, Ho, Wo), dtype of ``x``; ``G`` divides ``C``
    stride, padding, dilation : int or (h, w) pair
        ``Ho = (H + 2*ph - dh*(Kh-1) - 1) // sh + 1``, likewise ``Wo``.
    stream : numba stream, optional
        Where the copies and the kernel run; default: the default stream.
    version : int, optional
        Kernel version (1: one thread per output, 2: tiled in shared memory), see ``cuda_kernels``; default
        :func:`choose_version` (:func:`versions_for` says which). Version 2 where no tile fits is a ValueError.

    Returns
    -------
    out : shape (B, C, Ho, Wo), dtype of ``x``; an ndarray for NumPy inputs, else a numba device array
    """
    on_device = _on_device(x=x, kernel=kernel)
    as_array = _as_array(on_device, stream)
    x, kernel, geometry = check_involution2d(x, kernel, stride, padding, dilation, as_array=as_array)
    stream = _check_launch(version, stream)
    x, kernel = _to_device((x, kernel), on_device, stream)
    out = cuda.device_array(geometry.out_shape, x.dtype, stream=stream)
    cuda_kernels.forward(x, kernel, out, geometry, version=_version("forward", version, geometry), stream=stream)
    return out if on_device else _to_host((out,), stream)[0]


def involution2d_backward(grad_out, x, kernel, stride=1, padding=0, dilation=1, *, stream=None, version=None):
    """Gradients of :func:`involution2d` with respect to ``x`` and ``kernel``, on the GPU.

    Parameters
    ----------
    grad_out : ndarray or device array, shape (B, C, Ho, Wo), dtype of ``x``
    x, kernel, stride, padding, dilation, stream, version : as in :func:`involution2d`

    Returns
    -------
    grad_x : shape (B, C, H, W)
    grad_kernel : shape (B, G, Kh, Kw, Ho, Wo)
        ndarrays for NumPy inputs, else numba device arrays.
    """
    on_device = _on_device(grad_out=grad_out, x=x, kernel=kernel)
    grad_out, x, kernel, geometry = check_involution2d_backward(grad_out, x, kernel, stride, padding, dilation,
                                                                as_array=_as_array(on_device, stream))
    stream = _check_launch(version, stream)
    grad_out, x, kernel = _to_device((grad_out, x, kernel), on_device, stream)
    grad_x = cuda.device_array(geometry.x_shape, x.dtype, stream=stream)
    grad_kernel = cuda.device_array(geometry.kernel_shape, x.dtype, stream=stream)
    cuda_kernels.grad_x(grad_out, kernel, grad_x, geometry, version=_version("grad_x", version, geometry),
                        stream=stream)
    cuda_kernels.grad_kernel(grad_out, x, grad_kernel, geometry, version=_version("grad_kernel", version, geometry),
                             stream=stream)
    return (grad_x, grad_kernel) if on_device else _to_host((grad_x, grad_kernel), stream)


def is_device_array(value) -> bool:
    """True for numba device arrays and anything exposing ``__cuda_array_interface__``."""
    return bool(getattr(value, "__cuda_ndarray__", False)) or hasattr(value, "__cuda_array_interface__")


def _on_device(**arrays) -> bool:
    """True when every array is on the device, False when none is; a TypeError naming them when mixed."""
    placement = {name: is_device_array(value) for name, value in arrays.items()}
    if len(set(placement.values())) > 1:
        where = ", ".join(f"{name} on the {'device' if flag else 'host'}" for name, flag in placement.items())
        raise TypeError(f"{', '.join(arrays)} must be all NumPy arrays or all CUDA device arrays, got {where}")
    return all(placement.values())


def _as_array(on_device: bool, stream):
    """The per-array check for ``check_involution2d``: the reference's for the host, a no-copy one for devices.

    With an explicit ``stream`` the caller orders the inputs' producers before it (as the torch bridge does by
    passing torch's current stream), so importing them skips numba's synchronization of their stream.
    """
    if not on_device:
        return as_float_array
    return functools.partial(as_device_float_array, sync=stream is None)


def as_device_float_array(value, name: str, ndim: int, layout: str, *, sync: bool = True):
    """``value`` as a numba device array (no copy), float32/float64, ``ndim``-D and C-contiguous, else a named error.

    ``sync``: wait for the stream a ``__cuda_array_interface__`` producer names (numba's default) before use.
    """
    if not getattr(value, "__cuda_ndarray__", False):
        if not hasattr(cuda, "as_cuda_array"):
            raise TypeError(f"{name}: numba's CUDA simulator accepts only its own device arrays, "
                            f"got {type(value).__name__}")
        value = cuda.as_cuda_array(value, sync=sync)
    check_float_layout(value, name, ndim, layout)
    if not value.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device {layout}, got shape {tuple(value.shape)} "
                         f"with byte strides {tuple(value.strides)}; make it contiguous first "
                         f"(torch: .contiguous(), CuPy: cupy.ascontiguousarray)")
    return value


def _check_launch(version, stream):
    """Check ``version``; return the stream to launch on (0, the default stream, for None)."""
    if version is not None and (isinstance(version, bool) or version not in VERSIONS):
        raise ValueError(f"version must be one of {VERSIONS} or None, got {version!r}")
    return 0 if stream is None else stream


def _version(name: str, version, geometry: Geometry) -> int:
    """``version``, or :func:`choose_version`'s for None."""
    return choose_version(name, geometry) if version is None else version


def _to_device(arrays, on_device: bool, stream):
    """Device arrays as they are; ndarrays copied to the device (C-contiguous)."""
    if on_device:
        return arrays
    return tuple(cuda.to_device(np.ascontiguousarray(array), stream=stream) for array in arrays)


def _to_host(arrays, stream):
    """Copy device arrays back to new ndarrays and wait for ``stream``."""
    host = tuple(array.copy_to_host(stream=stream) for array in arrays)
    if not isinstance(stream, int):
        stream.synchronize()
    return host
