"""Multi-fidelity rungs: pause each trial at fractions of its budget and go on only
with those that can still move the frontier.

Successive halving keeps a fixed share of trials at each rung, ranked by one
objective. A frontier search has no such ranking: a trial matters when it can
still beat its *bar* (the largest ε no trial of its size or smaller has
reached, ``sweeps.frontier.bar_for``). So at a rung the driver asks the
stopping rule (``workers.stopping.out_of_reach``), with the bar as the
frontier stands at the pause, not as it stood when the trial was handed out:
trials that finished meanwhile may have lowered it. A trial that passes is
continued from its checkpoint (a file under the work directory, never in the
SQL store) before any new trial is handed out; one that does not is recorded
as ``pruned`` at the rung.

Only the driver keeps this state (the result's ``rungs``: step, monitor error,
bar, verdict); the workers train between two steps and return. Where a trial
pauses is ``workers.stopping.rung_steps``, which the spec checks too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from varbench.workers.stopping import out_of_reach


@dataclass
class Fidelity:
    """One trial's way through its rungs (driver-side)."""

    stops: list[int]  # pause steps still ahead
    seconds: float = 0.0  # compute of the segments run so far
    compile_s: float = 0.0  # their compile time (a compiled step recompiles per segment)
    passed: list[dict] = field(default_factory=list)  # {step, monitor_err, bar, verdict}

    def judge(self, result: dict, bar: float | None, steps: int) -> str | None:
        """Note the rung a paused ``result`` stopped at; the reason to prune it there,
        or None to go on."""
        step, err = int(result["steps_run"]), result.get("monitor_err")
        self.stops = [s for s in self.stops if s > step]
        self.seconds += float(result.get("seconds") or 0.0)
        self.compile_s += float(result.get("compile_seconds") or 0.0)
        why = None if err is None else out_of_reach(float(err), bar, step, steps)
        self.passed.append({"step": step, "monitor_err": err, "bar": bar,
                            "verdict": "pruned" if why else "continued"})
        return None if why is None else f"rung at step {step}: {why}"

    def pruned(self, result: dict, why: str) -> dict:
        """The record of a trial pruned at the rung ``result`` paused at."""
        return {**result, "status": "pruned", "reason": why, "paused": False,
                "pruned_at": result["steps_run"], "seconds": self.seconds,
                "compile_seconds": self.compile_s, "rungs": list(self.passed)}

    def finish(self, result: dict) -> dict:
        """A continued trial's final result, with its rungs and every segment's compute
        and compile time (``sec_per_step`` stays the last segment's)."""
        segment = float(result.get("seconds") or 0.0)
        return {**result, "seconds": self.seconds + segment, "rungs": list(self.passed),
                "compile_seconds": self.compile_s + float(result.get("compile_seconds") or 0.0)}
