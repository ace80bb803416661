"""Training a tiny RedNet on scikit-learn's bundled digits (8x8, 10 classes, no download) with the NumPy layers.

The 8x8 images are scaled to ``size x size`` by pixel repetition, standardised with the training set's mean and
standard deviation, and split 75/25 (stratified, fixed seed). SGD with momentum and a cosine learning rate;
incomplete last batches are dropped (training-mode BN needs more than one value per channel). Every option is
checked before training starts, and a loss that stops being finite ends the run with ``FloatingPointError``.
"""
from __future__ import annotations

import math
import numbers
import time
from pathlib import Path

import numpy as np

from involution.spec import check_int

from .checkpoint import save_npz
from .loss import softmax_cross_entropy
from .optim import SGD
from .rednet import RedNet

TINY_REDNET = dict(stage_blocks=(1, 1, 1, 1), num_classes=10, in_channels=1, stem_channels=16, base_channels=8,
                   kernel_size=3, group_channels=4, reduction=2)
SIZES = (16, 32)


def load_digits_split(size: int = 16, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: images ``(N, 1, size, size)`` float32, labels ``(N,)`` int64."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the digits demo needs scikit-learn: pip install 'involution[train]'") from error
    digits = load_digits()
    images = np.repeat(np.repeat(digits.images, size // 8, axis=1), size // 8, axis=2)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.25, random_state=seed,
                                                        stratify=digits.target)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (((x - mean) / std).astype(np.float32) for x in (x_train, x_test))
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def tiny_rednet(backend: str = "reference", seed: int = 0) -> RedNet:
    """The demo model: ``RedNet(**TINY_REDNET)``, one involution bottleneck per stage, about 0.1M parameters."""
    return RedNet(**TINY_REDNET, seed=seed, backend=backend)


def accuracy(model, x, y, batch_size: int = 256) -> float:
    """Fraction of ``x`` classified as ``y`` by ``model`` in eval mode."""
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(axis=1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train_digits(epochs: int = 8, size: int = 16, batch_size: int = 32, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 1e-4, seed: int = 0, backend: str = "reference", out=None, progress: bool = True,
                 log=print) -> dict:
    """Train :func:`tiny_rednet` on the digits; print one line per epoch; optionally save weights to ``out`` (.npz).

    Returns
    -------
    history : dict of lists, one entry per epoch: ``epoch``, ``loss`` (mean training loss), ``test_accuracy``,
        ``seconds`` (wall time of the epoch's training and evaluation); plus ``model`` (the trained RedNet).

    Raises
    ------
    TypeError, ValueError
        Before any training: ``epochs < 1``, ``batch_size < 2`` or larger than the training set, ``lr`` not a
        finite number > 0, ``out`` in a folder that does not exist, a bad ``size``, ``seed`` or ``backend``.
    FloatingPointError
        The training loss became NaN or infinite (the run diverged, e.g. a learning rate too large).
    """
    from tqdm import tqdm  # the `train` extra, with scikit-learn's digits

    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=2)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if out is not None and not Path(out).parent.is_dir():
        raise ValueError(f"out: folder {str(Path(out).parent)!r} does not exist (checked before training)")
    x_train, y_train, x_test, y_test = load_digits_split(size, seed)
    if batch_size > len(x_train):
        raise ValueError(f"batch_size ({batch_size}) must be at most the {len(x_train)} training images")
    model = tiny_rednet(backend, seed)
    optimizer = SGD(model.parameters(), lr, momentum, weight_decay)
    steps_per_epoch = len(x_train) // batch_size
    total_steps, step = epochs * steps_per_epoch, 0
    rng = np.random.default_rng(seed)
    history = {"epoch": [], "loss": [], "test_accuracy": [], "seconds": []}
    bar = tqdm(total=total_steps, unit="step", leave=False, disable=not progress)
    for epoch in range(1, epochs + 1):
        started, losses = time.perf_counter(), []
        order = rng.permutation(len(x_train))
        model.train()
        for batch in range(steps_per_epoch):
            index = order[batch * batch_size:(batch + 1) * batch_size]
            loss, grad_logits = softmax_cross_entropy(model(x_train[index]), y_train[index])
            if not math.isfinite(loss):
                bar.close()
                raise FloatingPointError(f"training diverged: the loss is {loss} at epoch {epoch}, step {step + 1} "
                                         f"(lr {lr}); try a smaller learning rate")
            optimizer.zero_grad()
            model.backward(grad_logits)
            optimizer.lr = lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            optimizer.step()
            losses.append(loss)
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
        test_accuracy = accuracy(model, x_test, y_test)
        for key, value in zip(history, (epoch, float(np.mean(losses)), test_accuracy,
                                        time.perf_counter() - started)):
            history[key].append(value)
        log(f"epoch {epoch}/{epochs}: train loss {history['loss'][-1]:.4f}, test accuracy "
            f"{100 * test_accuracy:.2f}% ({len(y_test)} images), {history['seconds'][-1]:.1f} s")
    bar.close()
    if out is not None:
        save_npz(model, out)
        log(f"saved weights to {out}")
    history["model"] = model
    return history


