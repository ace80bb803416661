"""A minimal module tree in the spirit of ``torch.nn.Module``: parameters, buffers, state dicts, forward, backward.

Children and parameters register themselves by attribute assignment, in assignment order, so
``state_dict()`` keys and their order are those of the equivalent PyTorch/mmcls model. Every module
caches what its hand-written ``backward`` needs during ``forward``; ``backward(grad_output)`` returns the
gradient with respect to the input and *adds* into ``.grad`` of the module's parameters.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .checkpoint import IncompatibleKeys, check_state_dict
from .init import parameter_dtype


class Parameter:
    """A trainable array: ``data`` (ndarray) and the accumulated ``grad`` (ndarray of the same shape, or None)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def accumulate(self, grad: np.ndarray) -> None:
        """Add ``grad`` into ``.grad`` (starting from zero), as autograd does."""
        self.grad = grad.copy() if self.grad is None else self.grad + grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: children, parameters and buffers in assignment order; ``__call__`` runs ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "path", "")
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value) -> None:
        registries = (self._modules, self._parameters, self._buffers)
        if isinstance(value, Module):
            target = self._modules
        elif isinstance(value, Parameter):
            target = self._parameters
        elif name in self._buffers:
            target = self._buffers
        else:
            target = None
        for registry in registries:
            if registry is not target:
                registry.pop(name, None)
        if target is not None:
            target[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: np.ndarray) -> None:
        """Register ``array`` as state that is saved in ``state_dict`` but not trained (e.g. running means)."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    # -- the tree ---------------------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        """Yield ``(dotted_name, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (module for _, module in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self):
        """Yield ``(dotted_name, Parameter)`` in state-dict order."""
        for prefix, module in self.named_modules():
            for name, parameter in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), parameter

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self):
        """Yield ``(dotted_name, ndarray)`` of every buffer."""
        for prefix, module in self.named_modules():
            for name, buffer in module._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), buffer

    def name_modules(self) -> "Module":
        """Store each descendant's dotted name in its ``path`` so that its errors can say which layer failed."""
        for name, module in self.named_modules():
            object.__setattr__(module, "path", name)
        return self

    def describe(self) -> str:
        """``ClassName 'dotted.path'`` (or just the class name) for error messages."""
        return f"{type(self).__name__} '{self.path}'" if self.path else type(self).__name__

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed and ordered exactly as PyTorch would."""
        return OrderedDict((key, np.array(value, copy=True)) for key, value in self._named_state())

    def state_spec(self) -> "OrderedDict[str, tuple[tuple[int, ...], np.dtype]]":
        """Each state-dict key -> ``(shape, dtype)`` of its parameter or buffer, in state-dict order."""
        return OrderedDict((key, (np.shape(value), np.asarray(value).dtype)) for key, value in self._named_state())

    def _named_state(self):
        """``(key, array)`` of every parameter's data and every buffer (not copied), in state-dict order."""
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, parameter in module._parameters.items():
                yield dot + name, parameter.data
            for name, buffer in module._buffers.items():
                yield dot + name, buffer

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state`` into the parameters and buffers, keeping each one's dtype.

        Every value is checked and converted first (:func:`~involution.reference.checkpoint.check_state_dict`);
        only then is anything written, so a failed load leaves the model as it was. Strict (the default): any
        missing key, unexpected key, shape mismatch or non-numeric value raises one error summarising all of them;
        a missing BatchNorm ``num_batches_tracked`` keeps its current value, as in torch. ``strict=False``
        tolerates missing and unexpected keys (not mismatches) and returns them.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, as ``torch.nn.Module.load_state_dict``.
        """
        arrays, missing, unexpected, _ = check_state_dict(self.state_spec(), state, strict=strict,
                                                          model=type(self).__name__)
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name in list(module._parameters):
                if dot + name in arrays:
                    module._parameters[name].data = arrays[dot + name]
            for name in list(module._buffers):
                if dot + name in arrays:
                    setattr(module, name, arrays[dot + name])
        return IncompatibleKeys(missing, unexpected)

    def astype(self, dtype) -> "Module":
        """Convert every parameter and floating-point buffer to ``dtype`` (float32 or float64, else ``TypeError``)
        in place (gradients are dropped)."""
        dtype = parameter_dtype(dtype)
        for module in self.modules():
            for parameter in module._parameters.values():
                parameter.data, parameter.grad = parameter.data.astype(dtype), None
            for name, buffer in module._buffers.items():
                if np.issubdtype(np.asarray(buffer).dtype, np.floating):
                    setattr(module, name, np.asarray(buffer).astype(dtype))
        return self

    # -- modes and gradients -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        """Reset every parameter's ``.grad`` to None (the next backward starts from zero)."""
        for parameter in self.parameters():
            parameter.grad = None

    # -- computation -----------------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def __call__(self, x):
        return self.forward(x)

    def saved(self):
        """What the last ``forward`` saved for ``backward``; a ``RuntimeError`` naming the layer if none ran."""
        if "_cache" not in self.__dict__:
            raise RuntimeError(f"{self.describe()}: backward called before forward (nothing saved to differentiate)")
        return self._cache

    def check_input(self, x, channels: int | None = None, ndim: int = 4, layout: str = "(B, C, H, W)"):
        """``x`` as a float ndarray of ``ndim`` dims, ``channels`` channels and the layer's dtype, else a named error."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.describe()}: input must be a NumPy array {layout}, got {type(x).__name__}")
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(f"{self.describe()}: input must be a plain NumPy array, got a masked array (the layers "
                            f"would ignore its mask; pass x.filled(value))")
        if x.ndim != ndim:
            raise ValueError(f"{self.describe()}: input must be {ndim}-D {layout}, got shape {x.shape}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"{self.describe()}: expected an input with {channels} channels (dim 1), "
                             f"got shape {x.shape}")
        dtype = next((parameter.data.dtype for _, parameter in self.named_parameters()), None)
        if x.dtype not in (np.float32, np.float64) or (dtype is not None and x.dtype != dtype):
            raise TypeError(f"{self.describe()}: input must have dtype {dtype or 'float32 or float64'}, "
                            f"got {x.dtype}")
        return x

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append("  (" + name + "): " + repr(child).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class Chain(Module):
    """Runs its children in assignment order; backward runs them in reverse."""

    def forward(self, x):
        for child in self._modules.values():
            x = child(x)
        return x

    def backward(self, grad_output):
        for child in reversed(self._modules.values()):
            grad_output = child.backward(grad_output)
        return grad_output


class Sequential(Chain):
    """``Sequential(*modules)``: children named ``"0"``, ``"1"``, ...; indexable and iterable."""

    def __init__(self, *modules: Module):
        super().__init__()
        for index, module in enumerate(modules):
            setattr(self, str(index), module)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
