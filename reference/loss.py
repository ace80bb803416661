"""Softmax cross-entropy, mean over the batch, with its gradient."""
from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Parameters
    ----------
    logits : ndarray, shape (B, K), float32 or float64
    labels : ndarray of ints, shape (B,), each in ``[0, K)``

    Returns
    -------
    loss : float
    grad_logits : ndarray, shape (B, K), dtype of ``logits``: ``(softmax(logits) - onehot(labels)) / B``
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"logits must be a 2-D float32/float64 array (B, K), got shape {logits.shape} "
                         f"dtype {logits.dtype}")
    batch, classes = logits.shape
    if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({batch},), got shape {labels.shape} dtype {labels.dtype}")
    if batch and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(batch)
    loss = -float(log_probs[rows, labels].mean())
    grad_logits = np.exp(log_probs)
    grad_logits[rows, labels] -= 1
    return loss, grad_logits / batch
