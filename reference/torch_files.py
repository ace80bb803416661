"""PyTorch files and modules for the checkpoint loader (:func:`involution.reference.checkpoint.load_checkpoint`).

Reads torch files with ``torch.load(weights_only=True)`` plus an allow-list of NumPy scalar types, which OpenMMLab
checkpoints keep in their ``meta`` (``{"meta": {"epoch": np.int64(...), ...}, "state_dict": {...}}``); turns
tensors into NumPy arrays; and converts checked arrays back into a torch module's dtypes.
"""
from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

NESTING = ("state_dict", "model")  # OpenMMLab / timm-style checkpoint dicts keep the state under these
# NumPy dtypes whose scalars and dtype objects may appear in a checkpoint: bool, integers, floats, complex.
NUMPY_TYPE_CODES = "?bhilqBHILQefdgFDG"


def numpy_scalar_globals() -> list:
    """The allow-list for ``weights_only`` loading: NumPy's scalar constructor (under its NumPy 2 and NumPy 1
    module names, as files pickled by either refer to it), ``numpy.dtype`` and the numeric dtype classes.

    None of them runs code from the file: they build numbers and dtypes from bytes.
    """
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    dtype_classes = [type(np.dtype(code)) for code in NUMPY_TYPE_CODES]
    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"), np.dtype,
            *dtype_classes]


def read_torch_file(path, weights_only: bool = True):
    """``torch.load(path, map_location="cpu")``, restricted (default) to tensors, containers and NumPy scalars.

    Raises
    ------
    pickle.UnpicklingError
        The file needs an object outside the allow-list; the message names it and the way out.
    ValueError
        The file is not a torch checkpoint (empty, foreign, truncated): one line naming the file and the reason.
    FileNotFoundError, PermissionError, IsADirectoryError
        As ``open``.
    """
    try:
        if not weights_only:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if not found:
            raise _not_a_checkpoint(path, error) from None
        raise pickle.UnpicklingError(
            f"{os.fspath(path)!r} cannot be read safely: it needs {found.group(1)}, which is not a tensor, container "
            "or NumPy scalar. If you trust the file, pass weights_only=False (that unpickles it without restriction "
            "and can run arbitrary code)") from error
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (EOFError, KeyError, IndexError, OSError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise _not_a_checkpoint(path, error) from None


def _not_a_checkpoint(path, error: Exception) -> ValueError:
    """One line: ``path`` is not a torch checkpoint, with ``error``'s own reason (its telling line, shortened)."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error: (.*)", text)
    reason = found.group(1) if found else (text.splitlines() or [""])[0]
    reason = f"{type(error).__name__}: {reason[:120]}" if reason else type(error).__name__
    return ValueError(f"{os.fspath(path)!r} is not a torch checkpoint, or is truncated ({reason})")


def numpy_state_dict(source, weights_only: bool = True) -> tuple[OrderedDict, list]:
    """``(state, notes)``: the state dict in ``source`` as NumPy arrays, and notes on how it was found.

    ``source``: a path (read by :func:`read_torch_file`), a mapping, a checkpoint dict with a ``"state_dict"`` or
    ``"model"`` mapping, or a ``torch.nn.Module``. bfloat16 tensors become float32 (exactly).

    Raises
    ------
    TypeError
        No state dict in ``source`` (the message names what there is), or a tensor of a dtype NumPy lacks.
    """
    where = "the given object"
    obj = source
    if isinstance(source, (str, os.PathLike)):
        where = f"file {os.fspath(source)!r}"
        obj = read_torch_file(source, weights_only)
    notes = []
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for entry in NESTING:
        if isinstance(obj, Mapping) and isinstance(obj.get(entry), Mapping):
            obj = obj[entry]
            notes.append(f"took the state from the checkpoint's {entry!r} entry")
            break
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where} holds a {type(obj).__name__}; expected a state dict (names -> tensors), a "
                        f"checkpoint dict with a 'state_dict' or 'model' entry, or a torch Module")
    state, widened = OrderedDict(), 0
    for key, value in obj.items():
        if torch.is_tensor(value):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                value, widened = value.float(), widened + 1
            try:
                value = value.numpy()
            except TypeError as error:
                raise TypeError(f"{key}: a {value.dtype} tensor has no NumPy equivalent ({error})") from None
        state[key] = value
    if widened:
        notes.append(f"widened {widened} bfloat16 tensors to float32 (exact)")
    return state, notes


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype that holds ``dtype``'s values exactly (float32 for bfloat16)."""
    return np.dtype(np.float32) if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype


def state_spec(model: torch.nn.Module) -> OrderedDict:
    """Each state-dict key of ``model`` -> ``(shape, NumPy dtype)``, as :func:`check_state_dict` expects."""
    return OrderedDict((key, (tuple(value.shape), numpy_dtype(value.dtype)))
                       for key, value in model.state_dict().items())


def to_tensors(model: torch.nn.Module, arrays: Mapping) -> OrderedDict:
    """Checked ``arrays`` as tensors of the dtypes of ``model``'s state (then ``load_state_dict`` copies them)."""
    current = model.state_dict()
    return OrderedDict((key, torch.from_numpy(array).to(current[key].dtype)) for key, array in arrays.items())
