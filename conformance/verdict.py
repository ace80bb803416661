"""From test outcomes to verdicts: the three tiers, the matrix cells, each implementation's verdict, exit codes.

Tiers
-----
correct (required)
    Values and gradients against the oracle, the algebraic properties, the core cases, NaN/Inf (a NaN in ``x``
    reaches exactly the outputs whose windows hold it) and extreme geometries, and ill-posed input is never
    answered with a value.
strict (always reported; required with ``--strict`` and for the project's own backends)
    Errors for ill-posed input are ValueError/TypeError naming the argument (under ``--framework torch`` also
    torch's RuntimeError naming it); policies of docs/policy.md beyond the definition's values (an infinite
    weight on a padded tap gives ``inf * 0 = NaN``).
capabilities (informational)
    float16, bfloat16, empty batch, integer and mixed dtypes: "rejected" or answered; a wrong answer is a
    failure of the correct tier. An empty batch whose forward is answered and whose backward raises is
    "rejected". ``torch.library.opcheck`` of a registered torch op: "pass", "n/a" without one, a failed check
    fails.

Declines
--------
A drawn case the implementation declines (``NotImplementedError``) is not evidence. A correct-tier property with
no computed example, or one where at least :data:`DECLINE_SHARE` of the drawn cases were declined, makes the
verdict "conformant only within what it answered" (exit 3), with the count and the implementation's reasons.

Exit codes: 0 conformant, 1 a failure (including a hang or a crash), 2 usage error, 3 conformant only within
declared limits or within what it answered, or too little evidence (the core cases were not run or not all
computed).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

TIERS = {
    "correct": [
        "core_cases_computed", "forward_matches_oracle", "noncontiguous_matches_contiguous",
        "batched_equals_per_sample", "backward_matches_autograd", "backward_matches_finite_differences",
        "linear_in_x", "linear_in_kernel", "constant_kernel_equals_depthwise_conv2d", "one_hot_kernel_shifts_input",
        "nonfinite_follows_definition", "extreme_geometry_matches_oracle", "forward_rejects_ill_posed_input",
        "backward_rejects_ill_posed_input", "outside_declared_limits_declined_or_right",
    ],
    "strict": ["forward_errors_name_the_argument", "backward_errors_name_the_argument", "padded_inf_times_zero_is_nan"],
    "capabilities": ["float16", "bfloat16", "integer_dtypes", "mixed_dtypes", "empty_batch", "torch_library_opcheck"],
}
PROPERTIES = [prop for properties in TIERS.values() for prop in properties]
TIER_OF = {prop: tier for tier, properties in TIERS.items() for prop in properties}
CORE = "core_cases_computed"
CHECKS = {"torch_library_opcheck"}  # capabilities that check something rather than answer an input kind: "pass"

# Matrix cells.
PASS, FAIL, SKIP, UNSUPPORTED, LIMITED, REJECTED, ANSWERS, NOT_APPLICABLE, NOT_RUN = (
    "pass", "FAIL", "skip", "unsupported", "limited", "rejected", "answers", "n/a", "-")

CONFORMANT, FAILED, WITHIN_LIMITS, WITHIN_ANSWERED, TOO_LITTLE, UNAVAILABLE = (
    "conformant", "FAIL", "conformant only within declared limits", "conformant only within what it answered",
    "too little evidence", "not run")
EXIT_CODES = {CONFORMANT: 0, FAILED: 1, WITHIN_LIMITS: 3, WITHIN_ANSWERED: 3, TOO_LITTLE: 3, UNAVAILABLE: 0}
# The share of a property's drawn cases that, declined, makes the verdict "conformant only within what it answered".
DECLINE_SHARE = 0.1


@dataclass
class Evidence:
    """What one property found on one implementation: drawn cases answered and declined, the implementation's
    reasons for declining (message -> count), and the cell's detail (a skip reason, a failure)."""

    answered: int = 0
    declined: int = 0
    reasons: dict = field(default_factory=dict)
    detail: str = ""


def declines(column: dict[str, str], evidence: dict[str, Evidence]) -> str | None:
    """Why the implementation's declines limit its verdict, or None: the correct-tier properties it computed no
    example of, or declined at least :data:`DECLINE_SHARE` of the drawn cases of, with the counts and reasons."""
    correct = [p for p in TIERS["correct"] if p != CORE and p in evidence]
    none = [p for p in correct if column.get(p) == UNSUPPORTED]
    most = [p for p in correct if column.get(p) == PASS and evidence[p].declined
            and evidence[p].declined >= DECLINE_SHARE * (evidence[p].declined + evidence[p].answered)]
    if not (none or most):
        return None
    declined = sum(evidence[p].declined for p in correct)
    drawn = declined + sum(evidence[p].answered for p in correct)
    reasons = Counter()
    for p in correct:
        reasons.update(evidence[p].reasons)
    because = "; ".join(f"{reason} ({count}x)" for reason, count in reasons.most_common(3))
    parts = [f"declined {declined} of {drawn} drawn cases" + (f": {because}" if because else "")]
    if none:
        parts.append(f"no computed example of {', '.join(none)}")
    if most:
        parts.append(f"{DECLINE_SHARE:.0%} or more declined in {', '.join(most)}")
    return "; ".join(parts)
USAGE_ERROR = 2


def cell(prop: str, outcomes: list) -> str:
    """The matrix entry for one property on one implementation, from its tests' outcomes."""
    if not outcomes:
        return NOT_RUN
    if any(o.outcome == "failed" for o in outcomes):
        return FAIL
    if any(o.outcome == "passed" for o in outcomes):
        return ANSWERS if TIER_OF.get(prop) == "capabilities" and prop not in CHECKS else PASS
    for prefix, value in (("limited", LIMITED), ("unsupported", UNSUPPORTED), ("rejected", REJECTED),
                          ("n/a", NOT_APPLICABLE)):
        if all(o.detail.startswith(prefix) for o in outcomes):
            return value
    return SKIP


@dataclass
class Verdict:
    """One implementation's verdict and why."""

    verdict: str
    reasons: list[str]
    strict_required: bool

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def judge(column: dict[str, str], description: dict, strict_required: bool, core_excluded: list[str],
          nothing_computed: bool = False, evidence: dict[str, Evidence] | None = None,
          narrowed: list[str] = ()) -> Verdict:
    """The verdict of one implementation from its matrix ``column`` (property -> cell).

    ``core_excluded``: the core cases its declared limits exclude (see ``test_op_core``); ``narrowed``: its
    declared limits narrower than what the suite judges (``limits.narrowed_by``), each of which alone makes the
    verdict "conformant only within declared limits", never "conformant"; ``nothing_computed``:
    it declined every core case (raised instead of answering). Such an implementation is never "conformant", not
    even within limits: too little evidence. ``evidence``: property -> :class:`Evidence`, for the declines
    (:func:`declines`) and to name the declined core cases.
    """
    evidence = evidence or {}
    if not description["available"]:
        return Verdict(UNAVAILABLE, [description["skip_reason"]], strict_required)
    required = [p for p, value in column.items()
                if value == FAIL and (TIER_OF.get(p) != "strict" or strict_required)]
    if required:
        return Verdict(FAILED, [f"{p} failed" for p in required], strict_required)
    reasons = []
    if column.get(CORE) in (None, NOT_RUN):
        return Verdict(TOO_LITTLE, [f"{CORE} was not run"], strict_required)
    if nothing_computed:
        return Verdict(TOO_LITTLE, ["no core case computed: every one was declined"], strict_required)
    declined = declines(column, evidence)
    if column[CORE] != PASS or core_excluded or narrowed:
        if column[CORE] != PASS or core_excluded:
            core_detail = evidence[CORE].detail if CORE in evidence and evidence[CORE].detail else column[CORE]
            reasons = [f"{CORE}: {core_detail}"] + [f"declared limits exclude core case {case}"
                                                    for case in core_excluded]
        if narrowed:
            reasons.append(f"conformant only within its declared limits: {', '.join(narrowed)}")
        return Verdict(WITHIN_LIMITS, reasons + ([declined] if declined else []), strict_required)
    if declined:
        return Verdict(WITHIN_ANSWERED, [declined], strict_required)
    strict_failed = [p for p in TIERS["strict"] if column.get(p) == FAIL]
    if strict_failed:
        reasons.append(f"strict tier not met ({', '.join(strict_failed)}); required with --strict")
    if not description["has_backward"]:
        reasons.append("forward only: no involution2d_backward, gradient properties skipped")
    return Verdict(CONFORMANT, reasons, strict_required)


def exit_code(verdicts: dict[str, Verdict]) -> int:
    """1 if any implementation failed, else 3 if any is conformant only within limits or lacks evidence (or none
    could be loaded), else 0."""
    judged = [verdict for verdict in verdicts.values() if verdict.verdict != UNAVAILABLE]
    if not judged:
        return EXIT_CODES[TOO_LITTLE]
    codes = {verdict.exit_code for verdict in judged}
    return 1 if 1 in codes else max(codes)
