"""Checkpoints: strict state-dict matching, ``.npz`` files, and conversion of PyTorch/mmcls state dicts.

Nothing here downloads weights: ``state_dict_from_torch`` reads a state dict, checkpoint dict or ``.pth`` file
that the user already has (e.g. an official RedNet checkpoint; its keys are the keys of our models).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np


def check_state_dict(expected_shapes: dict, state: dict, strict: bool = True, model: str = "model"):
    """Compare ``state`` with ``expected_shapes`` (key -> shape); raise one ``ValueError`` listing every problem.

    Returns ``(missing_keys, unexpected_keys)``. Shape mismatches always raise; missing and unexpected keys
    raise only when ``strict``.
    """
    missing = [key for key in expected_shapes if key not in state]
    unexpected = [key for key in state if key not in expected_shapes]
    mismatched = [f"{key}: expected shape {tuple(shape)}, got {tuple(np.shape(state[key]))}"
                  for key, shape in expected_shapes.items()
                  if key in state and tuple(np.shape(state[key])) != tuple(shape)
                  and not (shape == () and np.size(state[key]) == 1)]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if problems:
        raise ValueError(f"state dict does not fit {model}:\n  " + "\n  ".join(problems))
    return missing, unexpected


def save_npz(model, path) -> None:
    """Write ``model.state_dict()`` to ``path`` (an uncompressed ``.npz``; keys are the state-dict keys)."""
    np.savez(path, **model.state_dict())


def load_npz(model, path, strict: bool = True):
    """Load a ``.npz`` written by :func:`save_npz` into ``model``; strictness as in ``Module.load_state_dict``."""
    with np.load(path, allow_pickle=False) as archive:
        state = OrderedDict((key, archive[key]) for key in archive.files)
    return model.load_state_dict(state, strict=strict)


def state_dict_from_torch(obj_or_path) -> "OrderedDict[str, np.ndarray]":
    """NumPy copy of a PyTorch state dict.

    Parameters
    ----------
    obj_or_path : mapping, dict with a ``"state_dict"`` entry (mmcls checkpoints), ``torch.nn.Module`` or path
        A path is read with ``torch.load(path, map_location="cpu", weights_only=True)``.

    Returns
    -------
    OrderedDict mapping each key to an ndarray (tensors are detached and moved to the CPU).
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("state_dict_from_torch needs PyTorch: pip install 'involution[torch]'") from error
    obj = obj_or_path
    if isinstance(obj, (str, os.PathLike)):
        obj = torch.load(obj, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TypeError(f"expected a state dict, a checkpoint dict with 'state_dict', a torch Module or a path, "
                        f"got {type(obj_or_path).__name__}")
    return OrderedDict((key, value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value))
                       for key, value in obj.items())
