"""What an implementation can take: its declared ``CONFORMANCE_LIMITS`` and the suite's cost caps, as rules.

No hypothesis here (the worker process imports this through ``backends``; the strategies draw inside it).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from involution.conformance.channel import plain_json_error
from involution.spec import Geometry

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Limits:
    """What an implementation can take: the strategies only draw cases inside these limits.

    ``max_work`` caps ``x.size + kernel.size + B*C*Kh*Kw*Ho*Wo`` (the CUDA simulator runs a Python thread
    per output element, so it gets a small cap); ``max_fd_elements`` caps ``x.size + kernel.size`` for
    finite differences (two forward calls per element). ``square_only``, ``max_dilation`` and
    ``same_padding_only`` restrict the geometry for implementations that cannot express the rest
    (the official naive code). ``max_examples`` caps hypothesis' examples per property.
    """

    max_work: int = 20_000
    max_fd_elements: int = 100
    max_extent: int = 7
    max_groups: int = 4
    max_group_channels: int = 16  # RedNet's layers have 16; 5 or more select the channel-vector CPU kernels
    max_batch: int = 3
    max_kernel: int = 5
    max_stride: int = 3
    max_dilation: int = 3
    square_only: bool = False
    same_padding_only: bool = False
    max_examples: int | None = None
    dtypes: tuple[str, ...] = DTYPES


def check_declared(declared) -> dict:
    """An implementation's ``CONFORMANCE_LIMITS`` checked field by field, as plain JSON data ready to send.

    Returns a new dict (``dtypes`` as a list of str). Raises ``TypeError`` naming the field when a value is not
    plain JSON data (an object of the implementation's own, which the suite never unpickles) or not of the
    field's type, and ``ValueError`` for an unknown field or a limit below 1.
    """
    if type(declared) is not dict:
        raise TypeError(f"CONFORMANCE_LIMITS must be a dict, got {type(declared).__module__}."
                        f"{type(declared).__qualname__}")
    error = plain_json_error(declared, "CONFORMANCE_LIMITS")
    if error:
        raise TypeError(error)
    known = {field.name for field in fields(Limits)}
    checked = {}
    for name, value in declared.items():
        where = f"CONFORMANCE_LIMITS[{name!r}]"
        if name not in known:
            raise ValueError(f"{where}: unknown field; the fields are {', '.join(sorted(known))}")
        if name in ("square_only", "same_padding_only"):
            if type(value) is not bool:
                raise TypeError(f"{where} must be True or False, got {value!r:.80}")
        elif name == "dtypes":
            if type(value) not in (list, tuple) or not all(item in DTYPES for item in value):
                raise TypeError(f"{where} must be a list of {', '.join(DTYPES)}, got {value!r:.80}")
            value = list(value)
        elif not (type(value) is int and value >= 1) and not (name == "max_examples" and value is None):
            raise TypeError(f"{where} must be an integer >= 1, got {value!r:.80}")
        checked[name] = value
    return checked


def limits_from(declared: dict, caps: dict | None = None) -> Limits:
    """The :class:`Limits` of checked ``declared`` limits (see :func:`check_declared`) over the suite's ``caps``."""
    merged = {**(caps or {}), **declared}
    if "dtypes" in merged:
        merged["dtypes"] = tuple(merged["dtypes"])
    return Limits(**merged)


def narrowed_by(declared: dict, examples: int | None = None) -> list[str]:
    """The fields of ``declared`` (an implementation's ``CONFORMANCE_LIMITS``) narrower than what the suite judges.

    The definition covers every size, geometry and float dtype; the suite draws up to its own :class:`Limits`
    (cost caps, not a statement about the op). A declared bound below the suite's, ``square_only`` or
    ``same_padding_only`` set, ``dtypes`` missing one of :data:`DTYPES`, or ``max_examples`` below ``examples``
    (the suite's examples per property) narrows what is judged, so the verdict can be no better than "conformant
    only within declared limits". A bound at or above the suite's narrows nothing. Returns ``name=value (why)``.
    """
    suite, found = Limits(), []
    for name, value in declared.items():
        if name in ("square_only", "same_padding_only"):
            if value:
                found.append(f"{name}=True")
        elif name == "dtypes":
            missing = [dtype for dtype in DTYPES if dtype not in value]
            if missing:
                found.append(f"dtypes={list(value)!r} (not {', '.join(missing)})")
        elif name == "max_examples":
            if value is not None and examples is not None and value < examples:
                found.append(f"max_examples={value} (the suite runs {examples} per property)")
        elif value < getattr(suite, name):
            found.append(f"{name}={value} (the suite draws up to {getattr(suite, name)})")
    return found


def work(geometry: Geometry) -> int:
    """The size measure that :attr:`Limits.max_work` caps."""
    x_size = geometry.batch * geometry.channels * geometry.height * geometry.width
    kernel_size = int(np.prod(geometry.kernel_shape))
    return x_size + kernel_size + geometry.macs


def same_padding(kernel: int, dilation: int) -> int:
    """The padding that keeps the size at stride 1 for odd kernels: ``dilation * (kernel - 1) // 2``."""
    return dilation * (kernel - 1) // 2


def excluded_by(declared: dict, geometry: Geometry, dtype: str) -> list[str]:
    """The fields of ``declared`` (an implementation's ``CONFORMANCE_LIMITS``) that rule out this call.

    Only what an implementation declared counts; the suite's own cost caps (``max_examples``,
    ``max_fd_elements``) never exclude a call.
    """
    g = geometry
    min_h = max(1, g.dilation[0] * (g.kernel_h - 1) + 1 - 2 * g.padding[0])
    min_w = max(1, g.dilation[1] * (g.kernel_w - 1) + 1 - 2 * g.padding[1])
    same = tuple(same_padding(k, d) for k, d in zip((g.kernel_h, g.kernel_w), g.dilation))
    square = g.kernel_h == g.kernel_w and g.stride[0] == g.stride[1] and g.dilation[0] == g.dilation[1] \
        and g.padding[0] == g.padding[1]
    admitted = {
        "max_work": lambda v: work(g) <= v, "max_extent": lambda v: max(g.height - min_h, g.width - min_w) <= v,
        "max_groups": lambda v: g.groups <= v, "max_group_channels": lambda v: g.group_channels <= v,
        "max_batch": lambda v: g.batch <= v, "max_kernel": lambda v: max(g.kernel_h, g.kernel_w) <= v,
        "max_stride": lambda v: max(g.stride) <= v, "max_dilation": lambda v: max(g.dilation) <= v,
        "square_only": lambda v: not v or square, "same_padding_only": lambda v: not v or g.padding == same,
        "dtypes": lambda v: dtype in v,
    }
    return [f"{name}={value!r}" for name, value in declared.items() if name in admitted and not admitted[name](value)]
