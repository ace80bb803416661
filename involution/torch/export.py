"""ONNX translations of the registered op ``torch.ops.involution.involution2d``, for both ``torch.onnx`` exporters.

Importing this module (``involution.torch.ops`` does, at its end) registers one graph, written once in
:func:`emit_involution2d`, twice:

* for the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch's default): as an onnxscript function in
  onnxscript's torch_lib registry (``onnxscript.function_libs.torch_lib.registration.torch_op``), from which
  ``torch.onnx`` builds its default ``ONNXRegistry`` at every export; skipped, with nothing to warn about, where
  onnxscript is not installed (the dynamo exporter needs it anyway);
* for the TorchScript exporter (``dynamo=False``): with :func:`torch.onnx.register_custom_op_symbolic`, opsets 18
  and up.

So ``torch.onnx.export(RedNet(26), ...)`` works with the default ``"fast"`` backend and no switch. The graph (opset
18, standard ONNX operators only, so any runtime runs it) gathers the ``Kh*Kw`` taps of the padded input with two
``Gather`` nodes (rows, then columns, each copying contiguous blocks), multiplies by the kernel and sums the taps:
24 nodes for every layer, whatever its kernel size, with dynamic batch, height and width. The gather
materialises the ``Kh*Kw``-fold tap tensor, as ``nn.Unfold`` does: a standard-operator graph has no fused
multiply-reduce over a window. The graph computes in the input's dtype (the fast op widens float16/bfloat16 to
float32 for the sum).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

OPSET = 18  # ReduceSum's axes as an input (13+), Shape's start attribute (15+); torch's dynamo exporter default


def emit_involution2d(node, constant, x, kernel, channels: int, kernel_shape: tuple[int, int, int],
                      stride, padding, dilation):
    """Emit the involution graph with ``node`` and ``constant``; return the output value.

    Parameters
    ----------
    node : callable ``node(op_type, *inputs, **attributes) -> value``
        Adds one ONNX node (opset 18) and returns its output; attributes are ints or lists of ints.
    constant : callable ``constant(array) -> value``
        An int64 constant of the array's shape (a 0-d array: a scalar).
    x : value, (B, C, H, W)
    kernel : value, (B, G, Kh, Kw, Ho, Wo)
    channels : int
        ``C``; it and ``kernel_shape = (G, Kh, Kw)`` must be static, the batch and spatial sizes may be dynamic.
    stride, padding, dilation : (h, w) pairs of ints

    Returns
    -------
    out : value, (B, C, Ho, Wo), ``out[b, c, i, j] = sum_{u, v} kernel[b, c // (C // G), u, v, i, j] *
    x_pad[b, c, i*sh + u*dh, j*sw + v*dw]`` (:mod:`involution.spec`).
    """
    groups, kernel_h, kernel_w = kernel_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph or pw:
        x = node("Pad", x, constant(np.array([0, 0, ph, pw, 0, 0, ph, pw])))
    size = node("Shape", x, start=2)  # [Hp, Wp]
    # Output row i reads padded row i*sh + u*dh for tap row u; i*sh < Hp - dh*(Kh-1) gives exactly Ho rows.
    limit = node("Sub", size, constant(np.array([dh * (kernel_h - 1), dw * (kernel_w - 1)])))
    indices = []
    for axis, step, taps, spacing in ((0, sh, kernel_h, dh), (1, sw, kernel_w, dw)):
        starts = node("Range", constant(np.array(0)), node("Gather", limit, constant(np.array(axis)), axis=0),
                      constant(np.array(step)))
        offsets = constant(np.arange(taps).reshape(taps, 1) * spacing)  # (K, 1)
        indices.append(node("Add", node("Unsqueeze", starts, constant(np.array([0]))), offsets))  # (K, Ho or Wo)
    grouped = node("Reshape", x, node("Concat", constant(np.array([0, groups, channels // groups])), size, axis=0))
    # Gather whole rows (axis 3, blocks of Wp), then put the columns before the rows so that the column gather
    # also copies blocks (of Ho): a gather along the last axis copies element by element, ten times slower.
    rows = node("Transpose", node("Gather", grouped, indices[0], axis=3), perm=[0, 1, 2, 3, 5, 4])  # (.., Kh, Wp, Ho)
    taps = node("Gather", rows, indices[1], axis=4)  # (B, G, Cg, Kh, Kw, Wo, Ho)
    weights = node("Unsqueeze", node("Transpose", kernel, perm=[0, 1, 2, 3, 5, 4]), constant(np.array([2])))
    out = node("ReduceSum", node("Mul", taps, weights), constant(np.array([3, 4])), keepdims=0)  # (B, G, Cg, Wo, Ho)
    out = node("Transpose", out, perm=[0, 1, 2, 4, 3])
    out_shape = node("Concat", constant(np.array([0, channels])), node("Shape", kernel, start=4), axis=0)
    return node("Reshape", out, out_shape)


def _static(sizes, name: str, layout: str, positions) -> list[int]:
    """The entries ``positions`` of ``sizes``, checked to be static ints (ONNX export needs them fixed)."""
    values = [sizes[index] if sizes is not None and index < len(sizes) else None for index in positions]
    if not all(isinstance(value, int) for value in values):
        raise ValueError(f"{name} {layout} must have static sizes at dims {list(positions)} for ONNX export "
                         f"(the graph's reshapes and constants use them), got {list(sizes or [])}")
    return values


# --- the TorchScript exporter ---------------------------------------------------------------------------------
def _torchscript_symbolic(g, x, kernel, stride, padding, dilation):
    """``torch.onnx.register_custom_op_symbolic`` function: :func:`emit_involution2d` with ``g.op``."""
    from torch.onnx import symbolic_helper

    def node(op_type, *inputs, **attributes):
        return g.op(op_type, *inputs, **{f"{name}_i": value for name, value in attributes.items()})

    def constant(array):
        return g.op("Constant", value_t=torch.tensor(np.asarray(array, dtype=np.int64)))

    (channels,) = _static(symbolic_helper._get_tensor_sizes(x), "x", "(B, C, H, W)", (1,))
    kernel_shape = _static(symbolic_helper._get_tensor_sizes(kernel), "kernel", "(B, G, Kh, Kw, Ho, Wo)", (1, 2, 3))
    pairs = (symbolic_helper._get_const(value, "is", name) for value, name in
             ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    return emit_involution2d(node, constant, x, kernel, channels, tuple(kernel_shape), *pairs)


torch.onnx.register_custom_op_symbolic("involution::involution2d", _torchscript_symbolic, OPSET)


# --- the dynamo exporter --------------------------------------------------------------------------------------
def _register_onnxscript() -> None:
    """Register :func:`emit_involution2d` in onnxscript's torch_lib registry (a trace-only function)."""
    from onnxscript import ir
    from onnxscript.function_libs.torch_lib.registration import torch_op
    from onnxscript.onnx_opset import opset18 as op

    def node(op_type, *inputs, **attributes):
        return getattr(op, op_type)(*inputs, **attributes)

    def constant(array):
        return op.Constant(value=ir.tensor(np.asarray(array, dtype=np.int64)))

    @torch_op("involution::involution2d", trace_only=True)
    def involution2d(x, kernel, stride, padding, dilation):
        """involution2d(Tensor x, Tensor kernel, int[] stride, int[] padding, int[] dilation) -> Tensor"""
        (channels,) = _static(list(x.shape) if x.shape is not None else None, "x", "(B, C, H, W)", (1,))
        kernel_shape = _static(list(kernel.shape) if kernel.shape is not None else None, "kernel",
                               "(B, G, Kh, Kw, Ho, Wo)", (1, 2, 3))
        return emit_involution2d(node, constant, x, kernel, channels, tuple(kernel_shape),
                                 *(tuple(int(value) for value in pair) for pair in (stride, padding, dilation)))


try:
    import onnxscript  # noqa: F401  (the dynamo exporter's own dependency)
except ImportError:
    pass
else:
    try:
        _register_onnxscript()
    except (ImportError, AttributeError, TypeError) as error:  # an onnxscript whose torch_lib API moved
        warnings.warn(f"involution: the ONNX translation for torch.onnx.export(dynamo=True) is not registered "
                      f"(onnxscript {getattr(onnxscript, '__version__', '?')}: {error!r}); "
                      f"dynamo=False still works", RuntimeWarning, stacklevel=2)
