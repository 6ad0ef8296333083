"""Convergence checks: does a frontier point N*(ε) still move when the budget grows?

N* is "the smallest N that reaches ε under this training budget". For each
distinct N* trial of a cell (several ε may share one), two check trials run at
``factor`` times the budget:

- ``failing``: the largest-N completed trial below N* (the closest size that
  failed; ties go to the lower error), trained afresh with the same config and
  seed, only more steps;
- ``reaching``: the N* trial itself, continued from its checkpoint (not
  restarted), its cosine re-stretched to the new total
  (``workers.training.lr_factor``); retrained afresh at the larger budget
  where it kept no checkpoint (seed replicas, or recorded before checks).

Check trials train their whole budget (no early stop once the smallest ε
is reached: a stop would hide whether the error still moves).

A point is ``converged`` when the failing check still fails ε (err_ucb > ε)
and the reaching check's err_ucb moves by less than *its interval*: the
one-sided 95% margin err_ucb − err of the N* trial's own estimate. Both are
measured on the same evaluation inputs (the trial's eval stream), so a change
within that margin is below what the estimate can resolve. Otherwise the
point is ``budget-limited``. ``unchecked``: no check ran (checks off, a
censored point, or a check trial that failed). Where no completed trial lies below N*, the reaching check alone
decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from varbench.sweeps.frontier import FrontierPoint, TrialPoint

FAILING, REACHING = "failing", "reaching"
CONVERGED, BUDGET_LIMITED, UNCHECKED = "converged", "budget-limited", "unchecked"


@dataclass(frozen=True)
class CheckPlan:
    """The checks of one N* trial, and the ε it is N* for."""

    reaching: int  # the N* trial's number
    failing: int | None  # the largest-N completed trial below N*, if any
    eps: tuple[float, ...]


@dataclass(frozen=True)
class Verdict:
    eps: float
    verdict: str
    trial: int | None = None  # the N* trial judged
    n_star: int | None = None
    failing: int | None = None  # the failing neighbour checked
    factor: int | None = None
    failing_err_ucb: float | None = None  # the neighbour's at factor x the budget
    reaching_err_ucb: float | None = None  # the N* trial's, at the budget
    continued_err_ucb: float | None = None  # ... and continued to factor x
    interval: float | None = None  # the N* trial's err_ucb - err
    reason: str = ""

    @property
    def converged(self) -> bool | None:
        """True / False for a checked point, None where unchecked."""
        return None if self.verdict == UNCHECKED else self.verdict == CONVERGED

    def to_dict(self) -> dict:
        return {**asdict(self), "converged": self.converged}


def plan_checks(trials: Sequence[TrialPoint], points: Sequence[FrontierPoint]) -> list[CheckPlan]:
    """One plan per distinct N* trial among the reached points."""
    by_number = {t.number: t for t in trials}
    groups: dict[int, list[float]] = {}
    for p in points:
        if p.reached and p.trial_number in by_number:
            groups.setdefault(p.trial_number, []).append(p.eps)
    done = [t for t in trials if t.status == "completed" and t.err_ucb is not None]
    plans = []
    for number, eps in sorted(groups.items()):
        n_star = by_number[number].n_params
        below = [t for t in done if t.n_params < n_star]
        fail = max(below, key=lambda t: (t.n_params, -t.err_ucb, -t.number)) if below else None
        plans.append(CheckPlan(number, fail.number if fail else None,
                               tuple(sorted(eps, reverse=True))))
    return plans


def judge(points: Sequence[FrontierPoint], plans: Sequence[CheckPlan],
          checks: Mapping[tuple[str, int], Mapping], originals: Mapping[int, Mapping],
          factor: int) -> list[Verdict]:
    """The verdict of every point (largest ε first).

    ``checks``: (kind, trial number) -> the check trial's result (status, err_ucb,
    reason); ``originals``: trial number -> the trial's own result (err, err_ucb).
    """
    by_trial = {p.reaching: p for p in plans}
    out = []
    for p in points:
        plan = by_trial.get(p.trial_number) if p.reached else None
        if plan is None:
            out.append(Verdict(p.eps, UNCHECKED, reason="no check planned" if p.reached
                               else "not reached: nothing to check"))
            continue
        out.append(_judge_point(p, plan, checks, originals, factor))
    return out


def _judge_point(p: FrontierPoint, plan: CheckPlan, checks, originals, factor) -> Verdict:
    base = {"eps": p.eps, "trial": p.trial_number, "n_star": p.n_star,
            "failing": plan.failing, "factor": factor}
    orig = originals.get(plan.reaching) or {}
    reach = checks.get((REACHING, plan.reaching))
    fail = checks.get((FAILING, plan.failing)) if plan.failing is not None else None
    missing = [(what, c) for what, c in (("the N* trial's continuation", reach),
                                         ("the failing neighbour's retraining", fail))
               if (c is None or c.get("status") != "completed" or c.get("err_ucb") is None)
               and not (what.startswith("the failing") and plan.failing is None)]
    if missing:
        what, c = missing[0]
        why = "did not run" if c is None else (c.get("reason") or c.get("status"))
        return Verdict(verdict=UNCHECKED, reason=f"{what} {why}", **base)
    err, ucb = orig.get("err"), orig.get("err_ucb")
    interval = ucb - err if ucb is not None and err is not None else 0.0
    moved = abs(reach["err_ucb"] - ucb) >= interval if ucb is not None else True
    fail_ucb = fail["err_ucb"] if fail is not None else None
    fail_reaches = fail_ucb is not None and fail_ucb <= p.eps
    reasons = []
    if fail_reaches:
        reasons.append(f"trial {plan.failing} (N below N*) reaches ε at {factor}x the "
                       f"budget: err_ucb {fail_ucb:.4g}")
    if moved:
        reasons.append(f"the N* trial's err_ucb moves {ucb:.4g} -> {reach['err_ucb']:.4g} at "
                       f"{factor}x, beyond its interval {interval:.2g}")
    if not reasons:
        reasons.append(f"at {factor}x the budget: " + (
            f"trial {plan.failing} still fails ({fail_ucb:.4g} > ε), " if fail is not None
            else "no smaller trial to retrain, ") + f"the N* trial's err_ucb moves "
            f"{abs(reach['err_ucb'] - ucb):.2g} < its interval {interval:.2g}")
    return Verdict(verdict=BUDGET_LIMITED if fail_reaches or moved else CONVERGED,
                   failing_err_ucb=fail_ucb, reaching_err_ucb=ucb,
                   continued_err_ucb=reach["err_ucb"], interval=interval,
                   reason="; ".join(reasons), **base)


def converged_eps(verdicts: Sequence[Mapping]) -> frozenset[float]:
    """The ε whose point was judged converged (what scaling fits keep by default)."""
    return frozenset(float(v["eps"]) for v in verdicts if v.get("verdict") == CONVERGED)
