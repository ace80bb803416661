"""Checkpoints: one loader for the NumPy and the torch RedNets, strict state-dict checks, ``.npz`` files.

:func:`load_checkpoint` takes a ``.npz``/``.pth``/``.pt`` file, a state dict or a torch module and loads it into a
NumPy :class:`~involution.reference.module.Module` or a ``torch.nn.Module``. It accepts what PyTorch users have:

* official mmcls/mmpretrain checkpoints (keys ``backbone.*`` and ``head.*``, the keys of our models) and
  backbone-only ones (keys without ``backbone.``: the prefix is added, with a note);
* ``{"state_dict": ...}`` (OpenMMLab) and ``{"model": ...}`` nesting, with or without ``meta``;
* ``module.`` prefixes of ``DataParallel``/``DistributedDataParallel`` (removed, with a note);
* state dicts from before torch kept BatchNorm's ``num_batches_tracked`` (the buffer keeps its current value, as
  ``torch.nn.Module.load_state_dict`` does);
* bfloat16 tensors (widened to float32 exactly, then cast to the model's dtype).

Loading checks everything first and writes only when every tensor fits, so a failed load leaves the model as it
was. Errors summarise: counts of missing, unexpected and mismatched keys, a few examples, and a hint. Torch files
are read with ``weights_only=True`` plus an allow-list of NumPy scalar types (:mod:`involution.reference.torch_files`);
an unrestricted unpickle happens only when the caller passes ``weights_only=False``. Nothing is downloaded.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

EXAMPLES = 4  # keys quoted per kind of problem in an error message
DATA_PARALLEL_PREFIX = "module."
BACKBONE_PREFIX = "backbone."


class IncompatibleKeys(NamedTuple):
    """Keys of a non-strict load that the model lacks (``unexpected_keys``) or the state lacks (``missing_keys``)."""

    missing_keys: list
    unexpected_keys: list


class CheckpointReport(NamedTuple):
    """What :func:`load_checkpoint` did: keys left out (non-strict loads) and ``notes`` on what it renamed or kept."""

    missing_keys: list
    unexpected_keys: list
    notes: list


def _examples(items, separator: str = ", ") -> str:
    """The first :data:`EXAMPLES` of ``items`` joined, and how many more there are."""
    shown = separator.join(items[:EXAMPLES])
    return shown + (f"{separator}... ({len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else "")


def _prefix_hint(missing, unexpected) -> str | None:
    """A sentence naming a key prefix that would map the unexpected keys onto the missing ones, if there is one."""
    missing_set = set(missing)
    for key in unexpected:
        for cut in (index + 1 for index, char in enumerate(key) if char == "."):
            if key[cut:] in missing_set:
                return f"the given keys carry the prefix {key[:cut]!r} (e.g. {key!r}): strip it"
    unexpected_set = set(unexpected)
    for key in missing:
        for cut in (index + 1 for index, char in enumerate(key) if char == "."):
            if key[cut:] in unexpected_set:
                return f"the model's keys carry the prefix {key[:cut]!r} that the given keys lack (e.g. {key!r})"
    return None


def _converted(key, value, shape, dtype, convert: bool = True):
    """``(array, None, None)``: ``value`` converted to ``dtype`` and ``shape`` (``convert``; else ``value``); or
    ``(None, kind, problem)`` with ``kind`` "type" (not an array of real numbers) or "value" (wrong shape, a
    fraction for an integer buffer)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. a bfloat16 or grad-requiring torch tensor
        return None, "type", f"{key}: {type(value).__name__} is not readable as an array of real numbers ({error})"
    if array.dtype.kind not in "biuf":
        return None, "type", f"{key}: dtype {array.dtype}, expected real numbers"
    if array.shape != tuple(shape) and not (tuple(shape) == () and array.size == 1):
        return None, "value", f"{key}: expected shape {tuple(shape)}, got {array.shape}"
    if not convert:
        return array, None, None
    if np.dtype(dtype).kind in "iu" and array.dtype.kind == "f" and not np.all(np.isfinite(array)
                                                                             & (array == np.round(array))):
        return None, "value", f"{key}: expected whole numbers for a {np.dtype(dtype)} buffer, got {array.ravel()[:3]}"
    return np.array(array, dtype=dtype, copy=True).reshape(shape), None, None


def check_state_dict(expected: dict, state, strict: bool = True, model: str = "model", *, convert: bool = True):
    """Check ``state`` against ``expected`` (key -> ``(shape, dtype)``) and convert it, or raise one error.

    Every key is checked before anything is returned, so callers can write all values or none.

    Parameters
    ----------
    expected : mapping of str to (shape, numpy dtype)
        The model's parameters and buffers.
    state : mapping of str to array-like
    strict : bool
        Missing and unexpected keys are errors (``num_batches_tracked`` may be missing, as in torch's strict load).
    model : str
        The model's name for messages.
    convert : bool
        ``False``: check keys, shapes and dtypes only (values are not read, nor copied; e.g. stand-ins built from
        ``.npy`` headers) and return the given values.

    Returns
    -------
    arrays : OrderedDict
        Each given key of ``expected`` -> ndarray of its shape and dtype.
    missing, unexpected : list of str
        Keys absent from ``state`` (other than ``num_batches_tracked``), keys of ``state`` the model lacks.
    notes : list of str

    Raises
    ------
    TypeError
        ``state`` is not a mapping, or a value is not an array of real numbers (e.g. an object array of ``None``).
    ValueError
        Shape mismatches, non-integer values for an integer buffer, and (``strict``) missing or unexpected keys:
        one message with the count of each kind, a few example keys and a hint.
    """
    if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
        raise TypeError(f"state must be a mapping of names to arrays, got {type(state).__name__}")
    absent = [key for key in expected if key not in state]
    kept_counters = [key for key in absent if key.endswith(".num_batches_tracked")]
    missing = [key for key in absent if key not in kept_counters]
    unexpected = [key for key in state if key not in expected]
    arrays, bad = OrderedDict(), {"type": [], "value": []}
    for key, (shape, dtype) in expected.items():
        if key in state:
            array, kind, problem = _converted(key, state[key], shape, dtype, convert)
            if problem is None:
                arrays[key] = array
            else:
                bad[kind].append(problem)
    bad_types, bad_values = bad["type"], bad["value"]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_examples(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_examples(unexpected)}")
    if bad_values:
        problems.append(f"shape or value mismatches ({len(bad_values)}): {_examples(bad_values, '; ')}")
    if bad_types:
        problems.append(f"not real numbers ({len(bad_types)}): {_examples(bad_types, '; ')}")
    if problems:
        hint = _prefix_hint(missing, unexpected) if strict else None
        if hint is None and (missing or unexpected) and strict:
            hint = "strict=False loads the keys that match and returns the missing and unexpected ones"
        if hint is None and bad_values:
            hint = "the state is for another configuration (depth, widths, kernel_size, group_channels, num_classes)"
        message = (f"state dict does not fit {model} ({len(expected)} keys expected, {len(state)} given):\n  "
                   + "\n  ".join(problems) + (f"\n  hint: {hint}" if hint else ""))
        raise (TypeError if bad_types else ValueError)(message)
    notes = [f"{len(kept_counters)} BatchNorm num_batches_tracked buffers absent (saved before torch 0.4.1): "
             "kept at their current values, as torch's load_state_dict does"] if kept_counters else []
    return arrays, missing, unexpected, notes


def save_npz(model, path) -> str:
    """Write ``model.state_dict()`` to an uncompressed ``.npz``; return the file name (``np.savez`` appends
    ``.npz`` to a name without it, and :func:`load_npz` finds it again the same way)."""
    path = os.fspath(path)
    np.savez(path, **model.state_dict())
    return path if path.endswith(".npz") else path + ".npz"


def _npz_path(path) -> str:
    """``path``, or ``path + ".npz"`` as ``np.savez`` names a file given without the suffix."""
    path = os.fspath(path)
    return path + ".npz" if _is_npz(path) and not path.endswith(".npz") else path


def read_npz_headers(path) -> OrderedDict:
    """Each array of a ``.npz`` -> a read-only stand-in of its dtype and shape, from the ``.npy`` header alone.

    No array data is read or decompressed, so the headers can be checked against a model
    (:func:`check_state_dict` with ``convert=False``) before a member's data is: a small compressed file that
    inflates to gigabytes is refused for what its headers say. The stand-ins are zero-strided views of one element.

    Raises
    ------
    ValueError
        The file is not a ``.npz`` of arrays, or is truncated: one line naming the file.
    """
    path = _npz_path(path)
    headers = OrderedDict()
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise ValueError(f"member {member!r} is not a .npy array")
                with archive.open(member) as stream:
                    shape, dtype = _npy_header(stream)
                headers[member[:-len(".npy")]] = np.broadcast_to(np.zeros((), dtype), shape)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{path!r} is not a .npz file of arrays, or is truncated: {error}") from None
    return headers


def _npy_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the header of the ``.npy`` file open in ``stream`` (its data is not read)."""
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy format version {version} is not supported")
    shape, _, dtype = read(stream)
    return shape, dtype


def read_npz(path, keys=None) -> OrderedDict:
    """The arrays of a ``.npz`` (``path``, or ``path + ".npz"`` as ``np.savez`` names it); no pickled objects.

    ``keys``: read only these members (the others' data is not decompressed); default all.

    Raises
    ------
    ValueError
        The file is not a ``.npz`` of arrays, or is truncated: one line naming the file.
    """
    path = _npz_path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return OrderedDict((key, archive[key]) for key in archive.files if keys is None or key in keys)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{path!r} is not a .npz file of arrays, or is truncated: {error}") from None


def load_npz(model, path, strict: bool = True):
    """Load a ``.npz`` written by :func:`save_npz` into ``model`` (same name rule); as ``model.load_state_dict``."""
    return model.load_state_dict(read_npz(path), strict=strict)


def state_dict_from_torch(obj_or_path, weights_only: bool = True) -> "OrderedDict[str, np.ndarray]":
    """NumPy copy of a PyTorch state dict.

    Parameters
    ----------
    obj_or_path : mapping, checkpoint dict (``"state_dict"`` or ``"model"`` entry), ``torch.nn.Module`` or path
        A path is read by :func:`involution.reference.torch_files.read_torch_file` (``weights_only`` loading with
        NumPy scalars allowed).
    weights_only : bool
        ``False`` unpickles a path without restriction: only for files you trust.

    Returns
    -------
    OrderedDict mapping each key to an ndarray (tensors detached and moved to the CPU; bfloat16 as float32).

    Raises
    ------
    TypeError
        The object (or the file's content) is not a state dict; the message names what it is.
    ImportError
        PyTorch is not installed.
    """
    try:
        import torch  # noqa: F401  (first, so that a missing torch is reported as such)

        from involution.reference.torch_files import numpy_state_dict
    except ImportError as error:
        raise ImportError("state_dict_from_torch needs PyTorch: pip install 'involution[torch]'") from error
    return numpy_state_dict(obj_or_path, weights_only)[0]


def _rename(state: OrderedDict, expected_keys, notes: list) -> OrderedDict:
    """``state`` with ``module.`` prefixes removed and, for a backbone-only state, ``backbone.`` added."""
    while state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        state = OrderedDict((key[len(DATA_PARALLEL_PREFIX):], value) for key, value in state.items())
        notes.append(f"removed the prefix {DATA_PARALLEL_PREFIX!r} (DataParallel/DistributedDataParallel) "
                     f"from all {len(state)} keys")
    expected = set(expected_keys)
    if state and not expected & set(state) and all(BACKBONE_PREFIX + key in expected for key in state):
        state = OrderedDict((BACKBONE_PREFIX + key, value) for key, value in state.items())
        notes.append(f"a backbone-only state: added the prefix {BACKBONE_PREFIX!r} to all {len(state)} keys")
    return state


def load_checkpoint(model, source, *, strict: bool = True, weights_only: bool = True) -> CheckpointReport:
    """Load ``source`` into ``model``, a NumPy ``Module`` or a ``torch.nn.Module``: the one loader of the project.

    Parameters
    ----------
    model : involution.reference.module.Module or torch.nn.Module
    source : str or os.PathLike, mapping, or torch.nn.Module
        A ``.npz`` file (read without pickle), any other file is read with ``torch.load`` (``weights_only``);
        a state dict, a checkpoint dict with ``"state_dict"`` or ``"model"``, or a torch module.
    strict : bool
        Missing and unexpected keys are errors (after the renames above); shape mismatches always are.
    weights_only : bool
        ``True`` (default): torch files may hold tensors, containers and NumPy scalars only. ``False`` runs the
        file's pickle without restriction (arbitrary code): only for files you trust.

    Returns
    -------
    CheckpointReport
        ``missing_keys``, ``unexpected_keys`` (empty when ``strict``) and ``notes`` (renames, kept buffers).

    Raises
    ------
    TypeError, ValueError
        As :func:`check_state_dict`; nothing is written then.
    pickle.UnpicklingError
        A torch file needs more than the allow-list; the message names the object and the way out.
    ImportError
        ``source`` is not a ``.npz`` file and PyTorch is not installed.
    """
    notes = []
    if callable(getattr(model, "state_spec", None)):  # a NumPy Module (torch modules have no state_spec)
        expected, as_model_values = model.state_spec(), None
    else:
        from involution.reference.torch_files import state_spec, to_tensors

        expected, as_model_values = state_spec(model), to_tensors
    model_name = type(model).__name__
    if _is_npz(source):
        in_file = read_npz_headers(source)
        headers = _rename(in_file, expected, notes)
        check_state_dict(expected, headers, strict, model_name, convert=False)  # keys, shapes, dtypes: no data yet
        renamed = dict(zip(headers, in_file))  # model key -> key in the file (_rename keeps the order)
        arrays = read_npz(source, {renamed[key] for key in headers if key in expected})
        state = OrderedDict((key, arrays[renamed[key]]) for key in headers if key in expected)
    else:
        try:
            import torch  # noqa: F401  (first, so that a missing torch is reported as such)

            from involution.reference.torch_files import numpy_state_dict
        except ImportError as error:
            raise ImportError(f"reading {type(source).__name__} {source!r:.80} needs PyTorch (only .npz files do "
                              "not): pip install 'involution[torch]'") from error
        state, notes = numpy_state_dict(source, weights_only)
        state = _rename(state, expected, notes)
    arrays, missing, unexpected, load_notes = check_state_dict(expected, state, strict, model_name)
    if _is_npz(source):
        unexpected = [key for key in headers if key not in expected]  # left unread, reported all the same
    model.load_state_dict(arrays if as_model_values is None else as_model_values(model, arrays), strict=False)
    return CheckpointReport(missing, unexpected, notes + load_notes)


def _is_npz(source) -> bool:
    """``source`` names a ``.npz`` file (or a name that ``np.savez`` completed with ``.npz``)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = os.fspath(source)
    return path.endswith(".npz") or (not os.path.exists(path) and os.path.exists(path + ".npz"))
