"""``torch.library.opcheck`` on a torch implementation's registered op, in a process of its own.

For ``--framework torch``: if the implementation's ``involution2d`` is an op registered through
:mod:`torch.library` (a ``torch.library.custom_op`` or a ``torch.ops`` overload), or its module holds one whose
name ends in ``::involution2d``, opcheck tests its schema, autograd registration, fake-tensor kernel and
behaviour under AOT dispatch, on a small float64 call ``(x, kernel, stride, padding, dilation)`` with the
hyper-parameters as ``[h, w]`` lists and inputs that require grad. The suite runs :func:`run` in a worker
process under its guard (:func:`involution.conformance.worker.run_opcheck`: memory limit, capped output, every
process left behind killed), which sends ``{"op": name or null, "checks": {check: "SUCCESS" or the error}}``
back through the channel; the implementation is never imported into the suite's process. By hand,
``python -m involution.conformance.opcheck SPEC DEVICE`` prints that object as JSON.
"""
from __future__ import annotations

import importlib
import json
import sys

import torch


def is_registered_op(value) -> bool:
    """Whether ``value`` is an op registered through torch.library (custom_op, or an overload in torch.ops)."""
    from torch._library.custom_ops import CustomOpDef

    return isinstance(value, (CustomOpDef, torch._ops.OpOverload, torch._ops.OpOverloadPacket))


def op_name(op) -> str:
    return getattr(op, "_qualname", None) or getattr(op, "_qualified_op_name", None) or str(op)


def registered_op(spec: str):
    """The registered op of implementation ``spec`` (a torch project backend or ``package.module[:attr]``), or None."""
    from involution.conformance.backends import PROJECT_BACKENDS

    module_name, _, attr = PROJECT_BACKENDS["torch"].get(spec, spec).partition(":")
    target = importlib.import_module(module_name)
    target = getattr(target, attr) if attr else target
    if is_registered_op(getattr(target, "involution2d", None)):
        return target.involution2d
    found = [value for value in getattr(target, "__dict__", {}).values()
             if is_registered_op(value) and op_name(value).endswith("::involution2d")]
    return found[0] if found else None


def run(spec: str, device: str = "cpu") -> dict:
    """``{"op": its name or None, "checks": {test: "SUCCESS" or the error text}}`` for implementation ``spec``."""
    op = registered_op(spec)
    if op is None:
        return {"op": None, "checks": {}}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=generator).to(device).requires_grad_()
    kernel = torch.randn(2, 2, 3, 3, 5, 6, dtype=torch.float64, generator=generator).to(device).requires_grad_()
    results = torch.library.opcheck(op, (x, kernel, [1, 1], [1, 1], [1, 1]), raise_exception=False)
    return {"op": op_name(op), "checks": {test: result if result == "SUCCESS" else f"{type(result).__name__}: "
                                          f"{result}".strip() for test, result in results.items()}}


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:3])))
