"""Frontier-aware stopping: end a trial that can no longer move the frontier.

The driver hands each trial a *bar*: the largest ε of the grid that no
finished trial of the same or smaller size has reached (``sweeps.frontier.
bar_for``). Below the bar the trial would set a new N*; above it, it cannot.

The rule is a measured bound, not an extrapolation. ``IMPROVEMENT`` holds, at
a fraction f of the step budget, the largest factor by which a trial's
monitor err_ucb still fell from there to the end of its budget, over 64 trials
of quick.yaml at two sweep seeds (warm-up then cosine decay; pruning off,
``benchmarks/prune_check.py`` and the curves the store keeps). A trial stops
at the first monitor evaluation from ``START`` (25%) on where its error is
above ``SAFETY`` (1.1) x that factor x the bar: on those curves no trial that
ends at or below its bar was ever that far above it. A bar of 0 (smaller
trials reached every ε) stops the trial at ``START``: nothing it reaches can
count. The previous rule (geometric extrapolation of the last two errors
beyond 1.5 x the bar) stopped the trial that set N*(0.035, L = 2) on
``make run``: the cosine decay gives most of the late drop it could not see.

Then the trial stops as ``pruned``. With ``prune`` off the rule is only
observed: the step where it would have fired is recorded and training goes
on, which is how the rate of wrong prunes is measured (benchmarks/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

START = 0.25
SAFETY = 1.1
# (fraction of the budget, largest err(f) / err(end) seen), measured: see the docstring
IMPROVEMENT = ((0.25, 1.90), (0.375, 1.57), (0.5, 1.34), (0.75, 1.05), (1.0, 1.0))


def improvement_bound(frac: float) -> float:
    """The most a trial's error still falls from ``frac`` of its budget to the end
    (linear between the measured fractions; not defined before ``START``)."""
    for (f0, g0), (f1, g1) in zip(IMPROVEMENT, IMPROVEMENT[1:]):
        if frac <= f1:
            t = (max(frac, f0) - f0) / (f1 - f0)
            return g0 + t * (g1 - g0)
    return 1.0


def rung_steps(fractions: list[float], steps: int, eval_every: int) -> list[int]:
    """The steps a trial of ``steps`` pauses at for a multi-fidelity rung
    (``orchestrator.rungs``): each fraction rounded up to a monitor evaluation (the
    rung judges the monitor error the pause ends on), dropping those that fall on or
    past the end or on an earlier rung (the spec refuses such fractions)."""
    out: list[int] = []
    for f in fractions:
        s = math.ceil(f * steps / eval_every) * eval_every
        if 0 < s < steps and s not in out:
            out.append(s)
    return out


def out_of_reach(err: float, bar: float | None, step: int, steps: int) -> str | None:
    """Why a trial at monitor error ``err`` after ``step`` of ``steps`` can no longer
    reach ``bar``, or None while it still can (or before ``START``, or with no bar).
    The one rule: the worker applies it at every monitor evaluation, a
    multi-fidelity rung (``orchestrator.rungs``) at a pause, against a fresher bar."""
    frac = step / steps
    if bar is None or frac < START or step >= steps:  # at the end nothing is left to save:
        return None  # the trial is evaluated and recorded with the error it ended at
    limit = SAFETY * improvement_bound(frac) * bar
    if not err > limit:
        return None
    return (f"monitor err {err:.3g} at step {step}/{steps} is above "
            f"{limit:.3g} = {SAFETY:g} x {improvement_bound(frac):.2f} x the bar "
            f"{bar:g}: no measured trial fell that much from here")


@dataclass
class StopRule:
    bar: float | None
    steps: int
    eval_every: int
    history: list[float] = field(default_factory=list)
    fired_at: int | None = None
    reason: str = ""

    def check(self, step: int, err: float) -> bool:
        """Record the monitor error at ``step``; True the first time the rule fires."""
        self.history.append(err)
        if self.fired_at is not None:
            return False
        why = out_of_reach(err, self.bar, step, self.steps)
        if why is None:
            return False
        self.fired_at, self.reason = step, why
        return True
