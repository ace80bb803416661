"""The worker channel's wire format: data only, so that nothing an implementation sends can run code in the parent.

A message is one JSON header followed by the raw bytes of each array it holds, each sent with
``Connection.send_bytes`` (no pickle anywhere: ``recv_bytes`` returns bytes, :func:`decode` builds only
``None``, bools, numbers, strings, lists, tuples, dicts and NumPy arrays of numeric dtypes from them). Values
that are none of these (an implementation's own result object) travel as a :class:`Unsendable` description,
exceptions as type name, nearest builtin base, message and traceback text. Every string that comes back is
stripped of ANSI escape codes and other control characters before it can reach the matrix or the report.

Arrays keep their memory layout when it is one of the suite's (:data:`~involution.conformance.layouts.LAYOUTS`):
the header names it and the receiver rebuilds it with :func:`~involution.conformance.layouts.as_layout`.
"""
from __future__ import annotations

import json
import re
from multiprocessing.connection import Connection

import numpy as np

from involution.conformance.layouts import as_layout, layout_of

# Largest header accepted, and the default bound on one message's array bytes (a call's own bound is set from
# its inputs by the worker's parent); the suite's arrays are kilobytes.
MAX_HEADER_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 1 << 26
MAX_TEXT = 20_000  # characters kept of any one string that comes back (messages, tracebacks, descriptions)
NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex: no object or structured dtypes
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class ProtocolError(Exception):
    """A message that is not in the channel's format (a worker that wrote to the pipe itself, or a bug)."""


class Unsendable:
    """Stands for a value that is not data (an object, a function): the suite fails the property on its type.

    Parameters
    ----------
    description : str
        The value's type and a shortened ``repr``, as the worker described it.
    """

    def __init__(self, description: str):
        self.description = description

    def __repr__(self) -> str:
        return f"<not an array: {self.description}>"


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` without ANSI escape codes or control characters (newlines and tabs kept), at most ``limit``
    characters (the middle cut out and marked)."""
    text = _CONTROL.sub("", _ANSI.sub("", str(text)))
    if len(text) > limit:
        text = f"{text[:limit // 2]} [... {len(text) - limit} characters cut ...] {text[-limit // 2:]}"
    return text


def describe_object(value) -> str:
    """``module.Type: repr`` of a value that is not data, its ``repr`` shortened (or why it failed)."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    try:
        text = repr(value)
    except Exception as error:  # an implementation's object whose repr fails is still described by its type
        text = f"repr failed with {type(error).__name__}"
    text = clean_text(text, 200)
    return text if text.startswith(("NotATensor(", "<function", "<lambda")) else f"{kind}: {text}"


def _encode(value, buffers: list):
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple):
        return {"t": kind.__name__, "v": [_encode(item, buffers) for item in value]}
    if kind is dict and all(type(key) is str for key in value):
        return {"t": "dict", "v": {key: _encode(item, buffers) for key, item in value.items()}}
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in NUMERIC_KINDS:
        array = np.asarray(value)
        buffers.append(np.ascontiguousarray(array).tobytes())
        return {"t": "array" if isinstance(value, np.ndarray) else "scalar", "dtype": array.dtype.str,
                "shape": list(array.shape), "layout": layout_of(array)}
    return {"t": "object", "description": describe_object(value)}


def _decode(node, buffers: list, depth: int = 0):
    if depth > 50:
        raise ProtocolError("values nested deeper than 50 levels")
    if node is None or type(node) in (bool, int, float):
        return node
    if type(node) is str:
        return clean_text(node)
    if type(node) is not dict or type(node.get("t")) is not str:
        raise ProtocolError(f"unexpected value {type(node).__name__}")
    tag = node["t"]
    if tag in ("list", "tuple") and type(node.get("v")) is list:
        items = [_decode(item, buffers, depth + 1) for item in node["v"]]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and type(node.get("v")) is dict:
        return {clean_text(key): _decode(item, buffers, depth + 1) for key, item in node["v"].items()}
    if tag == "object" and type(node.get("description")) is str:
        return Unsendable(clean_text(node["description"], 300))
    if tag in ("array", "scalar"):
        return _decode_array(node, buffers)
    raise ProtocolError(f"unknown value tag {tag!r:.40}")


def _decode_array(node: dict, buffers: list):
    try:
        dtype = np.dtype(str(node["dtype"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"bad array dtype: {error}") from None
    shape = node.get("shape")
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None:
        raise ProtocolError(f"array dtype {dtype} is not numeric")
    if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise ProtocolError(f"bad array shape {shape!r:.80}")
    if not buffers:
        raise ProtocolError("fewer array buffers than arrays")
    data = buffers.pop(0)
    if len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ProtocolError(f"array of {dtype} {tuple(shape)} does not fit its {len(data)} bytes")
    array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if node["t"] == "scalar":
        return array[()]
    layout = node.get("layout")
    return as_layout(array, layout) if type(layout) is str and layout != "contiguous" else array


_ABSENT = object()


def _clean_json(node, depth: int = 0):
    """A JSON value with every string (keys included) cleaned by :func:`clean_text`."""
    if depth > 50:
        raise ProtocolError("a message nested deeper than 50 levels")
    if type(node) is str:
        return clean_text(node)
    if type(node) is list:
        return [_clean_json(item, depth + 1) for item in node]
    if type(node) is dict:
        return {clean_text(key): _clean_json(item, depth + 1) for key, item in node.items()}
    return node


def send(connection: Connection, message: dict, arrays_in=None) -> None:
    """Send ``message`` (a dict of JSON data; ``arrays_in`` is encoded under its ``"value"`` key, which may hold
    arrays, tuples and objects) as a JSON header and one raw frame per array."""
    buffers: list[bytes] = []
    header = dict(message)
    if arrays_in is not None:
        header["value"] = _encode(arrays_in, buffers)
    header["buffers"] = len(buffers)
    connection.send_bytes(json.dumps(header).encode())
    for buffer in buffers:
        connection.send_bytes(buffer)


def _array_sizes(node, sizes: list, depth: int = 0) -> None:
    """Append the byte size of each array ``node`` declares, in the order their frames follow the header; raises
    :class:`ProtocolError` for a declaration that is not valid (checked before any frame is read)."""
    if depth > 50:
        raise ProtocolError("values nested deeper than 50 levels")
    if type(node) is dict:
        if node.get("t") in ("array", "scalar"):
            try:
                dtype = np.dtype(str(node.get("dtype")))
            except (TypeError, ValueError) as error:
                raise ProtocolError(f"bad array dtype: {error}") from None
            shape = node.get("shape")
            if dtype.kind not in NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None:
                raise ProtocolError(f"array dtype {dtype} is not numeric")
            if type(shape) is not list or not all(type(n) is int and 0 <= n < (1 << 40) for n in shape) \
                    or len(shape) > 32:
                raise ProtocolError(f"bad array shape {shape!r:.80}")
            size = dtype.itemsize
            for n in shape:
                size = min(size * n, 1 << 62)  # Python ints: no overflow, only a bound
            sizes.append(size)
            return
        value = node.get("v")
        items = value.values() if type(value) is dict else value if type(value) is list else ()
        for item in items:
            _array_sizes(item, sizes, depth + 1)


def receive(connection: Connection, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """The next message: its JSON header with ``"value"`` decoded (arrays rebuilt, strings cleaned).

    The header may be at most :data:`MAX_HEADER_BYTES`; it is decoded first, the arrays it declares are checked
    (numeric dtype, valid shape, as many as the frames it announces, at most ``max_bytes`` in all), and each frame
    is read only if its length is exactly its array's size: a message never makes this process hold more than
    ``max_bytes`` plus the header.

    Raises
    ------
    EOFError
        The other end closed the pipe (its process ended).
    ProtocolError
        The bytes are not a message of this format (then the channel cannot be trusted further).
    """
    try:
        header = json.loads(connection.recv_bytes(MAX_HEADER_BYTES))
    except (ConnectionResetError, BrokenPipeError):
        raise EOFError from None
    except (ValueError, RecursionError) as error:  # not JSON, or nested to exhaust the parser
        raise ProtocolError(f"a message that is not JSON: {type(error).__name__}") from None
    except OSError as error:  # multiprocessing's "bad message length": a header over the cap
        raise ProtocolError(f"{error} (a header over {MAX_HEADER_BYTES} bytes)") from None
    if type(header) is not dict or type(header.get("buffers")) is not int or not 0 <= header["buffers"] <= 64:
        raise ProtocolError("a message header without a valid buffer count")
    sizes: list[int] = []
    _array_sizes(header.get("value"), sizes)
    if len(sizes) != header["buffers"]:
        raise ProtocolError(f"a header that declares {len(sizes)} arrays but announces {header['buffers']} frames")
    if sum(sizes) > max_bytes:
        raise ProtocolError(f"a message of {sum(sizes)} bytes of arrays, over the {max_bytes} this call allows")
    buffers = []
    for size in sizes:
        try:
            data = connection.recv_bytes(max(size, 1))  # a longer frame is refused from its length, unread
        except (ConnectionResetError, BrokenPipeError):
            raise EOFError from None
        except OSError as error:
            raise ProtocolError(f"{error} (a frame longer than its array's {size} bytes)") from None
        if len(data) != size:
            raise ProtocolError(f"a frame of {len(data)} bytes for an array of {size} bytes")
        buffers.append(data)
    value = header.pop("value", None) if "value" in header else _ABSENT
    header = _clean_json(header)
    if value is not _ABSENT:
        header["value"] = _decode(value, buffers)
    if buffers:
        raise ProtocolError("more array buffers than arrays")
    return header


def plain_json_error(value, where: str) -> str | None:
    """Why ``value`` is not plain JSON data (exactly dict with str keys, list, tuple, str, int, float, bool or
    None, no subclasses), naming ``where`` it sits; None when it is."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return None
    if kind in (list, tuple):
        return next((error for index, item in enumerate(value)
                     if (error := plain_json_error(item, f"{where}[{index}]"))), None)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{where} has a key of type {type(key).__module__}.{type(key).__qualname__}, not str"
            error = plain_json_error(item, f"{where}[{key!r}]")
            if error:
                return error
        return None
    return (f"{where} must be plain JSON data (dict, list, str, int, float, bool or None), got "
            f"{kind.__module__}.{kind.__qualname__}")
