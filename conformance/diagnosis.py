"""Name the convention a failing implementation got wrong: the diagnosis catalogue.

When a value or gradient check fails, the answer is compared with what each known slip would compute, and every
slip it matches (within the same rounding bound as the check, see :mod:`~involution.conformance.tolerances`) is
named as a sentence an author can act on. Each entry of :data:`SLIPS` is a small function of the definition: it
wraps an :class:`Op` (the NumPy reference op, ``involution.reference``) into the op that commits the slip, so that
two slips compose (a port with two slips at once is named with both, see :func:`diagnose`). Where no entry (nor a
pair of entries) matches, the diagnosis says which quantity is wrong ("forward right, grad_x wrong, ...").

The failure message carries the diagnosis on a line of its own that starts with :data:`PREFIX`; the runner puts
it into the matrix, the verdict line and the JSON report (``results[].diagnosis``).
"""
from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass
from typing import Callable

import numpy as np

from involution.conformance.tolerances import (
    assert_matches_reference, bound, forward_terms, grad_kernel_terms, grad_x_terms,
)
from involution.reference.op import involution2d, involution2d_backward
from involution.spec import Geometry, check_geometry

PREFIX = "diagnosis: "
SEPARATOR = " | "
CALL_NOTE = "while computing "  # the start of a note naming the input of a call that raised
QUANTITIES = ("out", "grad_x", "grad_kernel")
WORDS = {"out": "forward", "grad_x": "grad_x", "grad_kernel": "grad_kernel"}


@dataclass(frozen=True)
class Op:
    """An involution and its backward on NumPy arrays with a :class:`~involution.spec.Geometry`."""

    forward: Callable  # (x, kernel, geometry) -> out
    backward: Callable  # (grad_out, x, kernel, geometry) -> (grad_x, grad_kernel)

    def results(self, x, kernel, geometry: Geometry, grad_out=None) -> dict:
        """``{"out": ...}`` and, with ``grad_out``, ``"grad_x"`` and ``"grad_kernel"``."""
        results = {"out": self.forward(x, kernel, geometry)}
        if grad_out is not None:
            results["grad_x"], results["grad_kernel"] = self.backward(grad_out, x, kernel, geometry)
        return results


DEFINITION = Op(lambda x, kernel, g: involution2d(x, kernel, *g.hyper_parameters),
                lambda grad_out, x, kernel, g: involution2d_backward(grad_out, x, kernel, *g.hyper_parameters))


@dataclass(frozen=True)
class Slip:
    """One known way to get the op wrong: its name, the sentence naming it, when it differs from the definition,
    and ``wrap(op, geometry, shapes)``, the op that commits it on top of ``op``.

    ``shapes`` holds the shapes the implementation answered (``"out"`` -> shape); only the output-size slip uses it.
    """

    name: str
    sentence: str
    applies: Callable  # (geometry, shapes) -> bool
    wrap: Callable  # (op, geometry, shapes) -> Op


# --- channel and kernel layouts: permutations -----------------------------------------------------------------

def _interleaved_groups(op: Op, g: Geometry, shapes) -> Op:
    """Channel c reads group ``c % G``: reorder the channels so that the definition's blocks are those groups."""
    order = np.arange(g.channels).reshape(g.group_channels, g.groups).T.reshape(-1)
    inverse = np.argsort(order)

    def forward(x, kernel, geometry):
        return op.forward(x[:, order], kernel, geometry)[:, inverse]

    def backward(grad_out, x, kernel, geometry):
        grad_x, grad_kernel = op.backward(grad_out[:, order], x[:, order], kernel, geometry)
        return grad_x[:, inverse], grad_kernel

    return Op(forward, backward)


def _kernel_permuted(permutation: Callable) -> Callable:
    """A slip that reads weight ``(g, u, v)`` from another place of the ``G*Kh*Kw`` kernel channels.

    ``permutation(geometry)`` gives, for each place ``g*Kh*Kw + u*Kw + v`` the port reads, where it really reads.
    The gradient of the permuted kernel goes back through the inverse permutation.
    """
    def wrap(op: Op, g: Geometry, shapes) -> Op:
        places = permutation(g)

        def permuted(kernel):
            flat = kernel.reshape(kernel.shape[0], g.groups * g.kernel_h * g.kernel_w, *kernel.shape[4:])
            return flat[:, places].reshape(kernel.shape)

        def forward(x, kernel, geometry):
            return op.forward(x, permuted(kernel), geometry)

        def backward(grad_out, x, kernel, geometry):
            grad_x, grad_permuted = op.backward(grad_out, x, permuted(kernel), geometry)
            flat = grad_permuted.reshape(grad_permuted.shape[0], len(places), *grad_permuted.shape[4:])
            grad_kernel = np.empty_like(flat)
            grad_kernel[:, places] = flat
            return grad_x, grad_kernel.reshape(kernel.shape)

        return Op(forward, backward)

    return wrap


def _taps(g: Geometry) -> np.ndarray:
    return np.arange(g.groups * g.kernel_h * g.kernel_w)


# --- padding, output size, backward-only slips ----------------------------------------------------------------

def _tensorflow_top_padding(g: Geometry) -> tuple[int, int]:
    """Top and left padding of TensorFlow's SAME: half the padding the output size uses, the odd row at the end."""
    return tuple(max((out - 1) * step + dil * (k - 1) + 1 - size, 0) // 2 for out, step, dil, k, size in zip(
        (g.out_h, g.out_w), g.stride, g.dilation, (g.kernel_h, g.kernel_w), (g.height, g.width)))


def _padded_other_side(op: Op, g: Geometry, shapes) -> Op:
    """Pads ``top`` rows above and ``2*ph - top`` below (likewise columns), then runs the op unpadded."""
    (top, left), (ph, pw) = _tensorflow_top_padding(g), g.padding
    widths = ((0, 0), (0, 0), (top, 2 * ph - top), (left, 2 * pw - left))

    def unpadded(x):
        x = np.pad(x, widths)
        return x, check_geometry(x.shape, g.kernel_shape, g.stride, 0, g.dilation)

    def forward(x, kernel, geometry):
        padded, inner = unpadded(x)
        return op.forward(padded, kernel, inner)

    def backward(grad_out, x, kernel, geometry):
        padded, inner = unpadded(x)
        grad_x, grad_kernel = op.backward(grad_out, padded, kernel, inner)
        return grad_x[:, :, top:top + g.height, left:left + g.width], grad_kernel

    return Op(forward, backward)


def _floor_output_size(op: Op, g: Geometry, shapes) -> Op:
    """Computes only the first rows and columns: as many as the implementation's answer has."""
    out_h, out_w = shapes["out"][2:]

    def forward(x, kernel, geometry):
        return op.forward(x, kernel, geometry)[:, :, :out_h, :out_w]

    return Op(forward, op.backward)


def _smaller_output(g: Geometry, shapes) -> bool:
    shape = shapes.get("out")
    return shape is not None and len(shape) == 4 and tuple(shape[:2]) == g.out_shape[:2] \
        and 1 <= shape[2] <= g.out_h and 1 <= shape[3] <= g.out_w and tuple(shape) != g.out_shape


def _stride_one_grad_x(op: Op, g: Geometry, shapes) -> Op:
    """``grad_x``: output pixel ``(i, j)`` scatters to padded input ``(i + u*dh, j + v*dw)``, as with stride 1."""
    (dh, dw), (ph, pw) = g.dilation, g.padding
    reach = (g.out_h + dh * (g.kernel_h - 1), g.out_w + dw * (g.kernel_w - 1))  # <= H + 2ph: the output-size rule
    inner = check_geometry((g.batch, g.channels, *reach), g.kernel_shape, 1, 0, g.dilation)

    def backward(grad_out, x, kernel, geometry):
        _, grad_kernel = op.backward(grad_out, x, kernel, geometry)
        grad_reach, _ = op.backward(grad_out, np.zeros(inner.x_shape, x.dtype), kernel, inner)
        canvas = np.zeros((g.batch, g.channels, g.height + 2 * ph, g.width + 2 * pw), grad_reach.dtype)
        canvas[:, :, :reach[0], :reach[1]] = grad_reach
        return canvas[:, :, ph:ph + g.height, pw:pw + g.width], grad_kernel

    return Op(op.forward, backward)


def _grad_kernel_one_channel(which: int) -> Callable:
    """``grad_kernel[b, g]`` from channel ``which`` of the group only (0 the first, -1 the last)."""
    def wrap(op: Op, g: Geometry, shapes) -> Op:
        def backward(grad_out, x, kernel, geometry):
            grad_x, _ = op.backward(grad_out, x, kernel, geometry)
            mask = np.zeros(g.group_channels, grad_out.dtype)
            mask[which] = 1
            only = grad_out * np.tile(mask, g.groups)[:, None, None]
            return grad_x, op.backward(only, x, kernel, geometry)[1]

        return Op(op.forward, backward)

    return wrap


SLIPS = [
    Slip("interleaved groups",
         "channel c reads kernel group c % G; the definition's groups are contiguous: group c // (C // G)",
         lambda g, shapes: 1 < g.groups < g.channels, _interleaved_groups),
    Slip("transposed taps",
         "tap (u, v) reads kernel[b, g, v, u] (the Kh*Kw taps column-major); index kernel[b, g, u, v], u the row",
         lambda g, shapes: min(g.kernel_h, g.kernel_w) > 1,
         _kernel_permuted(lambda g: _taps(g).reshape(g.groups, g.kernel_w, g.kernel_h).transpose(0, 2, 1)
                          .reshape(-1))),
    Slip("flipped taps",
         "tap (u, v) reads kernel[b, g, Kh-1-u, Kw-1-v], a convolution; involution, like conv2d, correlates: "
         "kernel[b, g, u, v]",
         lambda g, shapes: g.kernel_h * g.kernel_w > 1,
         _kernel_permuted(lambda g: _taps(g).reshape(g.groups, g.kernel_h, g.kernel_w)[:, ::-1, ::-1].reshape(-1))),
    Slip("taps-major kernel channels",
         "weight (g, u, v) read from kernel channel (u*Kw + v)*G + g (taps-major); the layout is group-major, "
         "channel g*Kh*Kw + u*Kw + v",
         lambda g, shapes: g.groups > 1 and g.kernel_h * g.kernel_w > 1,
         _kernel_permuted(lambda g: _taps(g).reshape(g.kernel_h * g.kernel_w, g.groups).T.reshape(-1))),
    Slip("SAME padding on the other side",
         "pads like TensorFlow's SAME (top = needed // 2, the odd row/column at the bottom/right); pad `padding` on "
         "both sides",
         lambda g, shapes: _tensorflow_top_padding(g) != g.padding, _padded_other_side),
    Slip("floor-divided output size",
         "fewer output rows/columns than the kernel's Ho x Wo, each right: a floor-divided size (such as "
         "H // stride); Ho = (H + 2p - d(K-1) - 1) // s + 1",
         _smaller_output, _floor_output_size),
    Slip("stride ignored in grad_x",
         "grad_x scatters output (i, j) to padded input (i + u*dh, j + v*dw), as if stride 1; scatter to "
         "(i*sh + u*dh, j*sw + v*dw)",
         lambda g, shapes: g.stride != (1, 1), _stride_one_grad_x),
    Slip("grad_kernel from the first channel",
         "grad_kernel[b, g] from the group's first channel only; sum over all C // G channels of the group",
         lambda g, shapes: g.group_channels > 1, _grad_kernel_one_channel(0)),
    Slip("grad_kernel from the last channel",
         "grad_kernel[b, g] holds the group's last channel only (= where += belonged); sum over all C // G "
         "channels",
         lambda g, shapes: g.group_channels > 1, _grad_kernel_one_channel(-1)),
]


def _terms(geometry: Geometry) -> dict:
    return {"out": forward_terms(geometry), "grad_x": grad_x_terms(geometry),
            "grad_kernel": grad_kernel_terms(geometry)}


def _matches(answer, expected, tolerance) -> bool:
    answer = np.asarray(answer)
    if answer.shape != np.shape(expected):
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(np.abs(answer.astype(np.float64) - expected) <= tolerance))


def _agrees(op: Op, results: dict, x, kernel, geometry: Geometry, grad_out) -> dict:
    """Quantity -> whether the implementation's answer equals ``op``'s within the rounding bound of its dtype."""
    x64, kernel64 = x.astype(np.float64), kernel.astype(np.float64)
    grad64 = None if grad_out is None else grad_out.astype(np.float64)
    need_backward = grad_out is not None and ("grad_x" in results or "grad_kernel" in results)
    expected = op.results(x64, kernel64, geometry, grad64 if need_backward else None)
    magnitude = op.results(np.abs(x64), np.abs(kernel64), geometry, np.abs(grad64) if need_backward else None)
    terms = _terms(geometry)
    return {name: _matches(answer, expected[name], bound(terms[name], x.dtype, magnitude[name]))
            for name, answer in results.items() if name in expected}


def diagnose(results: dict, x, kernel, geometry: Geometry, grad_out=None) -> list[str]:
    """For each wrong quantity in ``results``, the slips of :data:`SLIPS` (single ones, else pairs) that reproduce it.

    ``results``: the implementation's answers, ``"out"``, ``"grad_x"``, ``"grad_kernel"`` -> array (the gradients
    for ``grad_out``). Returns one sentence per slip or pair of slips, naming the quantities it explains
    ("forward matches interleaved groups: channel c uses ..."), and one for the wrong quantities nothing explains,
    saying which quantities are right and which wrong. Only slips that differ from the definition on this
    geometry are tried. Empty when every quantity is right.
    """
    shapes = {name: np.shape(answer) for name, answer in results.items()}
    correct = _agrees(DEFINITION, results, x, kernel, geometry, grad_out)
    wrong = [name for name in QUANTITIES if correct.get(name) is False]
    if not wrong:
        return []
    candidates = [slip for slip in SLIPS if slip.applies(geometry, shapes)]

    def agreement(*slips) -> dict:
        op = DEFINITION
        for slip in slips:
            op = slip.wrap(op, geometry, shapes)
        try:
            return _agrees(op, results, x, kernel, geometry, grad_out)
        except ValueError:  # these slips do not compose on this geometry
            return {}

    explained: dict[tuple, list[str]] = {}  # slips -> the wrong quantities they reproduce
    singles = {(slip,): agreement(slip) for slip in candidates}
    pairs = None
    for name in wrong:
        hits = [slips for slips, agrees in singles.items() if agrees.get(name)]
        if not hits:
            if pairs is None:
                pairs = {pair: agreement(*pair) for pair in itertools.combinations(candidates, 2)}
            hits = [slips for slips, agrees in pairs.items() if agrees.get(name)]
        for slips in hits:
            explained.setdefault(slips, []).append(name)
    sentences = []
    for slips, names in explained.items():
        what = " and ".join(WORDS[name] for name in names)
        if len(slips) == 1:
            sentences.append(f"{what} match{'es' if len(names) == 1 else ''} {slips[0].name}: {slips[0].sentence}")
        else:
            sentences.append(f"{what} match{'es' if len(names) == 1 else ''} two slips at once: "
                             + "; and ".join(f"{slip.name} ({slip.sentence})" for slip in slips))
    unexplained = [name for name in wrong if not any(name in names for names in explained.values())]
    if unexplained:
        state = ", ".join(f"{WORDS[name]} {'right' if correct[name] else 'wrong'}" for name in QUANTITIES
                          if name in correct)
        sentences.append(f"no known slip reproduces {' or '.join(WORDS[name] for name in unexplained)} ({state})")
    return sentences


def explain(results: dict, x, kernel, geometry: Geometry, grad_out=None) -> str:
    """:func:`diagnose` as the failure message's line: ``diagnosis: ...`` (sentences joined by :data:`SEPARATOR`)."""
    try:
        sentences = diagnose(results, x, kernel, geometry, grad_out)
    except Exception as error:  # a diagnosis must never hide the failure it explains
        sentences = [f"none (the diagnosis itself raised {type(error).__name__}: {error})"]
    return PREFIX + SEPARATOR.join(sentences) if sentences else ""


def final_replay() -> bool:
    """False while hypothesis generates or shrinks examples, True in its final replay of the failing one (the one
    it reports) and outside hypothesis: the diagnosis is computed only where it is printed."""
    try:
        from hypothesis.control import _current_build_context  # no public accessor of BuildContext.is_final
    except ImportError:  # another hypothesis: diagnose every failing example
        return True
    context = _current_build_context.value
    return context is None or getattr(context, "is_final", True)


def assert_matches_oracle(results: dict, x, kernel, geometry: Geometry, context, grad_out=None, *,
                          labels=None) -> None:
    """:func:`~involution.conformance.tolerances.assert_matches_reference` against the PyTorch oracle; a failure
    message ends with a line naming the slip (:func:`explain`), in the example hypothesis reports."""
    from involution.conformance.adapters import torch_oracle

    try:
        assert_matches_reference(results, x, kernel, geometry, context, grad_out,
                                 reference=(torch_oracle.involution2d, torch_oracle.involution2d_backward),
                                 labels=labels)
    except AssertionError as error:
        arrays = {name: value for name, value in results.items() if isinstance(value, np.ndarray)}
        line = explain(arrays, x, kernel, geometry, grad_out) if arrays and final_replay() else ""
        if line:
            raise AssertionError(f"{error}\n{line}") from None
        raise


def split(message: str) -> tuple[str, str]:
    """``(message without the diagnosis line, the diagnosis without its prefix)`` of a failure message."""
    head, found, tail = message.partition("\n" + PREFIX)
    return (head, tail.partition("\n")[0]) if found else (message, "")


def failure_entries(error: BaseException) -> list[dict]:
    """One entry per distinct failure in ``error`` (hypothesis' ExceptionGroup unpacked): ``{"message": ...,
    "diagnosis": ...}``.

    The message is ``Type: text``, without pytest's assertion introspection, followed by the drawn values that
    hypothesis noted (the shrunk case, what was injected) where the text does not already show them: so an
    exception raised by the implementation carries its input too.
    """
    if isinstance(error, BaseExceptionGroup):
        return [entry for inner in error.exceptions for entry in failure_entries(inner)]
    text, diagnosis = split(str(error).partition("\nassert ")[0])
    draws = []
    for note in getattr(error, "__notes__", []):
        label, _, value = note.partition(": ")
        if note.startswith("Draw ") and label.endswith(")"):  # a labelled draw: "Draw 2 (case): Case(...)"
            value = value.partition("  # ")[0]
            if value not in text:
                draws.append(f"{label.partition(' (')[2][:-1]}: {value}")
        elif note.startswith(CALL_NOTE) and note not in text:
            draws.append(note)
    message = f"{type(error).__name__}: {text}" + (f"; drawn {'; '.join(draws)}" if draws else "")
    return [{"message": message, "diagnosis": diagnosis}]


ILL_POSED_PROPERTIES = ("forward_rejects_ill_posed_input", "backward_rejects_ill_posed_input")


def ill_posed_answered(outcomes) -> str:
    """``"9 of 17 ill-posed kinds answered: x is 3-D; ..."`` from one property's outcomes on one implementation
    (the parametrized tests of ``test_op_errors``; those skipped as n/a are not counted); "" if none answered."""
    judged = [o for o in outcomes if o.outcome in ("passed", "failed")]
    answered = [o.detail.removeprefix("Failed: ").partition(": returned")[0] for o in judged if o.outcome == "failed"]
    return f"{len(answered)} of {len(judged)} ill-posed kinds answered: {'; '.join(answered)}" if answered else ""


def failure_lines(title: str, outcome, width: int, siblings=()) -> list[str]:
    """The matrix's lines for one failed test: each distinct failure (shortened) and, below it, its diagnosis.

    ``siblings``: every outcome of the same property and implementation; for the ill-posed properties the line
    lists every kind answered instead of the first.
    """
    if outcome.property in ILL_POSED_PROPERTIES and siblings:
        entries = [{"message": ill_posed_answered(siblings), "diagnosis": ""}]
    else:
        entries = outcome.failures or [{"message": outcome.detail, "diagnosis": ""}]
    lines = []
    for number, entry in enumerate(entries, 1):
        which = f" (failure {number} of {len(entries)})" if len(entries) > 1 else ""
        lines += textwrap.wrap(textwrap.shorten(f"{title}{which}: {entry['message']}", 400, placeholder=" [...]"),
                               width, initial_indent="  ", subsequent_indent="    ")
        if entry["diagnosis"]:
            lines += textwrap.wrap(PREFIX + entry["diagnosis"], width, initial_indent="    ",
                                   subsequent_indent="      ")
    return lines


def explain_verdict(verdict, outcomes) -> None:
    """Add to a verdict's reasons (in place) what its failures say: each distinct diagnosis, and, for an
    implementation whose only required failures are answers to ill-posed input, that wording
    ("values and gradients right; answers 2 ill-posed kinds (forward: 2 of 18 ill-posed kinds answered: ...)")."""
    failed = {o.property for o in outcomes if o.outcome == "failed"}
    required = [reason.removesuffix(" failed") for reason in verdict.reasons if reason.endswith(" failed")]
    if required and set(required) <= set(ILL_POSED_PROPERTIES):
        counts = {prop: ill_posed_answered([o for o in outcomes if o.property == prop]) for prop in required}
        total = sum(int(text.partition(" of ")[0]) for text in counts.values() if text)
        gradients = any(o.outcome == "passed" and o.property == "backward_matches_autograd" for o in outcomes)
        answers = "; ".join(f"{prop.partition('_')[0]}: {text}" for prop, text in counts.items() if text)
        verdict.reasons = [f"values{' and gradients' * gradients} right; answers {total} ill-posed "
                           f"kind{'s' * (total != 1)} ({answers})"]
    found = dict.fromkeys(sentence for outcome in outcomes if outcome.property in failed and outcome.failures
                          for entry in outcome.failures if entry["diagnosis"]
                          for sentence in entry["diagnosis"].split(SEPARATOR))
    short = dict.fromkeys(briefly(sentence) for sentence in found)
    if short:
        verdict.reasons.append(PREFIX + "; ".join(short))


def briefly(sentence: str) -> str:
    """A diagnosis sentence by its slips' names only (for the verdict line): ``forward matches interleaved groups
    + flipped taps``; a sentence naming no slip unchanged."""
    head, _, rest = sentence.partition(": ")
    names = [slip.name for slip in SLIPS if head.endswith(f" {slip.name}") or f" {slip.name} (" in f" {rest}"]
    what = sentence.partition(" match")[0]
    return f"{what} {'matches' if ' and ' not in what else 'match'} {' + '.join(names)}" if names else sentence
