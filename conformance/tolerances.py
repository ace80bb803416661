"""Every tolerance of the conformance suite, derived from the dtype and the length of each reduction.

A sum of ``n`` products computed in floating point with unit round-off ``u = eps / 2``, in any order,
errs by at most ``gamma_n * sum(|products|)`` with ``gamma_n = n*u / (1 - n*u)`` (Higham, *Accuracy and
Stability of Numerical Algorithms*, Thm. 3.1), plus ``u * |result|`` for the final rounding. So each check
compares elementwise against ``(n + 2) * eps * magnitude``, where ``magnitude`` is the same computation on
absolute values (``sum |products|``: the NumPy reference op applied to ``|x|`` and ``|kernel|`` in float64, so
no torch is needed to judge a result). ``eps`` rather than
``u`` leaves a factor 2 for the float64 oracle's own rounding. The reduction lengths ``n``:

* forward: ``Kh * Kw`` taps per output;
* ``grad_kernel``: ``C // G`` channels of a group per kernel entry;
* ``grad_x``: the taps that land on one input pixel, at most ``ceil(Kh / (sh / gcd(sh, dh)))`` per axis
  (``ceil(Kh / sh)`` for dilation 1), times the same for the width.

Finite differences of a bilinear op have no truncation error, only round-off: the loss is computed with
error ``< (Kh*Kw + 2 + log2 N) * u * L1`` (``L1 = sum |grad_out * products|``, numpy's pairwise sum of N terms)
and central differences divide that by ``eps_fd``; the step ``x +- eps_fd`` itself rounds with ``u * |x|``.
"""
from __future__ import annotations

import math

import numpy as np

from involution.reference.op import involution2d, involution2d_backward
from involution.spec import Geometry


def eps(dtype) -> float:
    """Machine epsilon of ``dtype`` (float32: 1.19e-7, float64: 2.22e-16)."""
    return float(np.finfo(dtype).eps)


def forward_terms(geometry: Geometry) -> int:
    """Products summed per output element: ``Kh * Kw``."""
    return geometry.kernel_h * geometry.kernel_w


def grad_kernel_terms(geometry: Geometry) -> int:
    """Products summed per ``grad_kernel`` element: the ``C // G`` channels of its group."""
    return geometry.group_channels


def grad_x_terms(geometry: Geometry) -> int:
    """Most products summed into one ``grad_x`` element: kernel taps ``u`` with ``u*dh = r (mod sh)``."""
    per_axis = [
        math.ceil(kernel / (stride // math.gcd(stride, dilation)))
        for kernel, stride, dilation in zip((geometry.kernel_h, geometry.kernel_w), geometry.stride, geometry.dilation)
    ]
    return per_axis[0] * per_axis[1]


def _absolute(array) -> np.ndarray:
    return np.abs(np.asarray(array, dtype=np.float64))


def magnitudes(x, kernel, geometry: Geometry, grad_out=None, *, any_group_rule=False):
    """``sum |products|`` of the forward (and, with ``grad_out``, of ``grad_x`` and ``grad_kernel``), float64.

    The op and its backward are sums of products, so each magnitude is the same computation on absolute values.
    Returns ``out_magnitude`` or ``(out_magnitude, grad_x_magnitude, grad_kernel_magnitude)``.
    ``any_group_rule=True`` bounds the forward's ``sum |products|`` whichever group each channel reads its kernel
    from (each kernel entry replaced by its largest magnitude over the groups): for properties of an
    implementation against itself, which hold for any group rule, so that a wrong group rule fails only the
    comparisons with the oracle.
    """
    x_abs, kernel_abs = _absolute(x), _absolute(kernel)
    if any_group_rule:
        kernel_abs = np.broadcast_to(kernel_abs.max(axis=1, keepdims=True, initial=0.0), kernel_abs.shape)
    out = involution2d(x_abs, kernel_abs, *geometry.hyper_parameters)
    if grad_out is None:
        return out
    return (out, *involution2d_backward(_absolute(grad_out), x_abs, kernel_abs, *geometry.hyper_parameters))


def bound(terms: int, dtype, magnitude: np.ndarray) -> np.ndarray:
    """Elementwise tolerance ``(terms + 2) * eps(dtype) * magnitude`` plus the smallest normal number."""
    return (terms + 2) * eps(dtype) * magnitude + np.finfo(dtype).tiny


def finite_difference_bound(geometry: Geometry, grad_magnitude, loss_l1: float, loss_terms: int, value_max: float,
                            step: float) -> np.ndarray:
    """Tolerance of a float64 central-difference gradient against the analytic one (see module docstring)."""
    unit = eps(np.float64) / 2
    loss_error = (forward_terms(geometry) + 2 + math.log2(max(loss_terms, 2))) * unit * loss_l1
    return 2 * (loss_error / step + 2 * unit * value_max / step * grad_magnitude) + np.finfo(np.float64).tiny


def assert_within(actual, expected, tolerance, what: str, case, *, dtype=...) -> None:
    """Assert ``|actual - expected| <= tolerance`` elementwise with the shapes, dtypes and worst value.

    The suite's result-type rule first: neither ``actual`` nor ``expected`` may be complex (a cast to float64
    would drop the imaginary part), and ``actual`` must be an array of ``dtype``: by default ``case.dtype``
    (the inputs' dtype of a drawn case) where ``case`` has one; ``dtype=None`` only where the answer's dtype
    is judged by its tolerance instead (the capabilities). Where ``expected`` is NaN or infinite, ``actual``
    must be the same (NaN, or the same infinity); anywhere else a NaN fails.
    """
    if dtype is ...:
        dtype = getattr(case, "dtype", None)
    for name, value in (("got", actual), ("expected", expected)):
        assert not np.iscomplexobj(value), \
            f"{what}: {name} a complex result ({np.asarray(value).dtype}); involution of real inputs is real; {case}"
    if dtype is not None:
        assert isinstance(actual, np.ndarray) and actual.dtype == np.dtype(dtype), \
            f"{what}: got {f'a {actual.dtype} array' if isinstance(actual, np.ndarray) else f'{actual!r:.80}'}, " \
            f"expected a {np.dtype(dtype)} array (the dtype of x); {case}"
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}; {case}"
    with np.errstate(invalid="ignore"):  # inf - inf where both are infinite: judged by same_nonfinite below
        error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    finite = np.isfinite(expected)
    same_nonfinite = (np.isnan(actual) & np.isnan(expected)) | (actual == expected)
    bad = np.where(finite, ~(error <= tolerance), ~same_nonfinite)
    if bad.any():
        error = np.where(finite, error, np.inf)
        worst = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(error, nan=np.inf), -1.0)), error.shape)
        tol = np.broadcast_to(tolerance, error.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {error.size} elements off; worst at {tuple(map(int, worst))}: "
            f"got {actual[worst]!r}, expected {expected[worst]!r}, error {error[worst]:.3e} > tolerance "
            f"{tol[worst]:.3e}; {case}"
        )


def assert_matches_reference(results: dict, x, kernel, geometry: Geometry, context, grad_out=None, *,
                             reference=(involution2d, involution2d_backward), labels=None) -> None:
    """Each of ``results`` (``"out"``, ``"grad_x"``, ``"grad_kernel"`` -> array; the gradients need ``grad_out``)
    is an ndarray of ``x``'s dtype and equals the float64 reference within its reduction's rounding bound.

    ``reference``: the ``(forward, backward)`` computing the expected values in float64, by default the NumPy
    reference op; the conformance suite passes its PyTorch oracle. ``labels``: what a failure calls each result
    (default its key).
    """
    labels = labels or {}
    forward, backward = reference
    x64, kernel64 = x.astype(np.float64), kernel.astype(np.float64)
    expected, terms = {}, {"out": forward_terms(geometry), "grad_x": grad_x_terms(geometry),
                           "grad_kernel": grad_kernel_terms(geometry)}
    if "out" in results:
        expected["out"] = forward(x64, kernel64, *geometry.hyper_parameters)
    if grad_out is None:
        magnitude = {"out": magnitudes(x, kernel, geometry)}
    else:
        grad_out64 = grad_out.astype(np.float64)
        expected["grad_x"], expected["grad_kernel"] = backward(grad_out64, x64, kernel64, *geometry.hyper_parameters)
        magnitude = dict(zip(("out", "grad_x", "grad_kernel"), magnitudes(x, kernel, geometry, grad_out)))
    for name, actual in results.items():
        assert isinstance(actual, np.ndarray) and actual.dtype == x.dtype, \
            f"{name} is {f'a {actual.dtype} array' if isinstance(actual, np.ndarray) else f'{actual!r:.80}'}, " \
            f"expected a {x.dtype} array; {context}"
        assert_within(actual, expected[name], bound(terms[name], x.dtype, magnitude[name]), labels.get(name, name),
                      context, dtype=x.dtype)
