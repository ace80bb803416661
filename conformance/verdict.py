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

Exit codes: 0 conformant, 1 a failure (including a hang or a crash), 2 usage error, 3 conformant only within
declared limits, or too little evidence (the core cases were not run or not all computed).
"""
from __future__ import annotations

from dataclasses import dataclass

TIERS = {
    "correct": [
        "core_cases_computed", "forward_matches_oracle", "noncontiguous_matches_contiguous",
        "batched_equals_per_sample", "backward_matches_autograd", "backward_matches_finite_differences",
        "linear_in_x", "linear_in_kernel", "constant_kernel_equals_depthwise_conv2d", "one_hot_kernel_shifts_input",
        "nonfinite_follows_definition", "extreme_geometry_matches_oracle", "forward_rejects_ill_posed_input",
        "backward_rejects_ill_posed_input",
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

CONFORMANT, FAILED, WITHIN_LIMITS, TOO_LITTLE, UNAVAILABLE = (
    "conformant", "FAIL", "conformant only within declared limits", "too little evidence", "not run")
EXIT_CODES = {CONFORMANT: 0, FAILED: 1, WITHIN_LIMITS: 3, TOO_LITTLE: 3, UNAVAILABLE: 0}
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
          nothing_computed: bool = False) -> Verdict:
    """The verdict of one implementation from its matrix ``column`` (property -> cell).

    ``core_excluded``: the core cases its declared limits exclude (see ``test_op_core``); ``nothing_computed``:
    it declined every core case (raised instead of answering). Such an implementation is never "conformant", not
    even within limits: too little evidence.
    """
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
    if column[CORE] != PASS or core_excluded:
        reasons = [f"{CORE}: {column[CORE]}"] + [f"declared limits exclude core case {case}" for case in core_excluded]
        return Verdict(WITHIN_LIMITS, reasons, strict_required)
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
