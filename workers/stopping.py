"""Frontier-aware stopping: end a trial that can no longer move the frontier.

The driver hands each trial a *bar*: the largest ε of the grid that no
finished trial of the same or smaller size has reached (``sweeps.frontier.
bar_for``). Below the bar the trial would set a new N*; above it, it cannot.
The rule, checked at each monitor evaluation:

- only from ``START`` (30%) of the step budget on, so warm-up and the first
  fast drop are never judged;
- the monitor err_ucb is above ``MARGIN`` (1.5) times the bar; and
- extrapolating the last two monitor errors geometrically (the same ratio per
  evaluation) to the end of the budget still lands above the bar.

Then the trial stops as ``pruned``. With ``prune`` off the rule is only
observed: the step where it would have fired is recorded and training goes
on, which is how the rate of wrong prunes is measured (benchmarks/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

START = 0.3
MARGIN = 1.5


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
        if self.bar is None or self.fired_at is not None or step < START * self.steps:
            return False
        if len(self.history) < 2 or not err > MARGIN * self.bar:
            return False
        prev = self.history[-2]
        ratio = min(err / prev, 1.0) if prev > 0 else 1.0
        left = (self.steps - step) / self.eval_every
        projected = err * ratio**left
        if projected <= self.bar:
            return False
        self.fired_at = step
        self.reason = (f"monitor err {err:.3g} at step {step}/{self.steps} is above "
                       f"{MARGIN:g} x the bar {self.bar:g}, projected {projected:.3g} at the end")
        return True

