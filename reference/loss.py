"""Softmax cross-entropy, mean over the batch, with its gradient."""
from __future__ import annotations

import numpy as np

from involution.spec import FLOAT_DTYPES


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Parameters
    ----------
    logits : ndarray, shape (B, K), float32 or float64, ``B, K >= 1``
    labels : ndarray of ints, shape (B,), each in ``[0, K)``

    Returns
    -------
    loss : float
    grad_logits : ndarray, shape (B, K), dtype of ``logits``: ``(softmax(logits) - onehot(labels)) / B``

    Raises
    ------
    TypeError
        ``logits`` not float32/float64, ``labels`` not integers.
    ValueError
        Wrong shapes, labels out of range, or an empty batch: the mean over no samples is undefined
        (``torch.nn.functional.cross_entropy`` returns NaN there, which would silently poison a training run;
        docs/policy.md).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits must have dtype float32 or float64, got {logits.dtype}")
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be 2-D (B, K) with K >= 1 classes, got shape {logits.shape}")
    batch, classes = logits.shape
    if batch == 0:
        raise ValueError("softmax_cross_entropy needs at least one sample: the mean over an empty batch is "
                         "undefined (torch returns NaN)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},) (one per row of logits), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(batch)
    loss = -float(log_probs[rows, labels].mean())
    grad_logits = np.exp(log_probs)
    grad_logits[rows, labels] -= 1
    return loss, grad_logits / batch
