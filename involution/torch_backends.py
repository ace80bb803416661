"""The torch backends' modules (the registry's torch rows), imported once, when this module is imported.

The front door (:func:`involution.involution2d` on tensors) reaches them through an ``import`` statement, which
``torch.compile`` executes while it traces (it refuses ``importlib.import_module``, through which the registry
loads a backend), so a function calling the front door compiles to one graph even on its very first call.
"""
from __future__ import annotations

from involution import backends


def _load(name: str):
    """The module of torch backend ``name``, or the ImportError that naming it must raise."""
    try:
        return backends.load(name, "torch")
    except ImportError as error:
        return error


MODULES = {name: _load(name) for name in backends.names("torch")}
MODULES[None] = MODULES[backends.default("torch")]


def module(backend: str | None):
    """The module of torch backend ``backend`` (None: the default).

    Raises
    ------
    ValueError
        ``backend`` is not a registered torch backend (the registry's message).
    ImportError
        Its dependencies are missing (the registry's message, naming the pip extra).
    """
    if backend not in MODULES:
        backends.get(backend, "torch")  # raises the registry's ValueError
    found = MODULES[backend]
    if isinstance(found, ImportError):
        raise found
    return found
