"""`varbench nightly`: run the nightly spec, compare with the previous night.

Each night is its own sweep, named ``<spec name>-<date>-<commit>`` and tagged
with date and git commit. The comparison uses bootstrap intervals (resampling
whole trials within each cell, as the scaling fits do), not repeated runs:

- a frontier point regresses when tonight's N*(ε, L) interval lies entirely
  above last night's (a point no longer reached counts as N* = ∞, but only
  when tonight tried sizes at least as large as last night's upper bound);
- an exponent regresses when tonight's β or γ interval lies entirely above
  last night's (the law got steeper).

Anything inside the noise is reported as unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from varbench.orchestrator.store import ResultsView
from varbench.sweeps.frontier import N_BOOT, nstar_intervals
from varbench.sweeps.scaling import ScalingFit


@dataclass
class PointChange:
    cell: str
    eps: float
    prev: tuple[float, float]  # 95% interval of N* (inf = not reached)
    curr: tuple[float, float]
    curr_max_n: int
    regression: bool


@dataclass
class Comparison:
    previous: str | None
    points: list[PointChange] = field(default_factory=list)
    exponents: list[str] = field(default_factory=list)
    exponent_regressions: list[str] = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return any(p.regression for p in self.points) or bool(self.exponent_regressions)

    def to_dict(self) -> dict:
        return {
            "previous": self.previous,
            "regression": self.regression,
            "points": [{"cell": p.cell, "eps": p.eps, "prev": list(map(_num, p.prev)),
                        "curr": list(map(_num, p.curr)), "curr_max_n": p.curr_max_n,
                        "regression": p.regression} for p in self.points],
            "exponent_regressions": self.exponent_regressions,
            "exponents": self.exponents,
        }


def _num(x: float):
    return None if math.isinf(x) else x


def group_key(cell) -> str:
    """What a cell measures, across nights (each night's sweep has its own name): model
    (a FlowAR cell's names its inference setting), target and L."""
    return f"{cell.variant}:{cell.target}:L={cell.lipschitz:g}"


def compare(store: ResultsView, prev_sweep: str | None, curr_sweep: str,
            prev_fits: list[ScalingFit] | None = None,
            curr_fits: list[ScalingFit] | None = None, n_boot: int = N_BOOT) -> Comparison:
    comp = Comparison(prev_sweep)
    if prev_sweep is None:
        return comp
    prev_row, curr_row = store.sweep(prev_sweep), store.sweep(curr_sweep)
    eps = [e for e in curr_row.spec["eps"] if e in set(prev_row.spec["eps"])]
    prev_cells = {group_key(c): c for c in store.cells(prev_row.id)}
    for c in store.cells(curr_row.id):
        key = group_key(c)
        if key not in prev_cells:
            continue
        prev_t = store.trial_points(prev_cells[key].id)
        curr_t = store.trial_points(c.id)
        prev_iv = nstar_intervals(prev_t, eps, n_boot)
        curr_iv = nstar_intervals(curr_t, eps, n_boot)
        curr_max = max((t.n_params for t in curr_t if t.status == "completed"), default=0)
        for e in eps:
            p_lo, p_hi = prev_iv[e]
            c_lo, c_hi = curr_iv[e]
            reg = c_lo > p_hi and (math.isfinite(c_lo) or curr_max >= p_hi)
            comp.points.append(PointChange(key, e, (p_lo, p_hi), (c_lo, c_hi), curr_max, reg))
    for pf in prev_fits or []:
        cf = next((f for f in curr_fits or [] if f.group == pf.group), None)
        if cf is None:
            continue
        for name in ("beta", "gamma"):
            p_ci, c_ci = getattr(pf, f"{name}_ci"), getattr(cf, f"{name}_ci")
            if p_ci is None or c_ci is None:
                continue
            line = (f"{pf.group} {name}: {getattr(pf, name):.3g} [{p_ci[0]:.3g}, {p_ci[1]:.3g}] -> "
                    f"{getattr(cf, name):.3g} [{c_ci[0]:.3g}, {c_ci[1]:.3g}]")
            comp.exponents.append(line)
            if c_ci[0] > p_ci[1]:
                comp.exponent_regressions.append(line)
    return comp


def comparison_markdown(comp: Comparison) -> list[str]:
    if comp.previous is None:
        return ["## Nightly comparison", "", "No previous night in the store: nothing to compare.", ""]
    fmt = lambda iv: f"[{_s(iv[0])}, {_s(iv[1])}]"  # noqa: E731
    lines = ["## Nightly comparison", "",
             f"Against {comp.previous}. Noise = 95% bootstrap intervals over trials; a regression "
             "is an interval entirely above last night's.", "",
             "| cell | ε | previous N* interval | tonight N* interval | verdict |", "|---|---|---|---|---|"]
    for p in comp.points:
        verdict = "REGRESSION" if p.regression else "within noise or better"
        lines.append(f"| {p.cell} | {p.eps:g} | {fmt(p.prev)} | {fmt(p.curr)} | {verdict} |")
    lines.append("")
    if comp.exponents:
        lines += ["Exponents (previous -> tonight):", ""]
        lines += [f"- {e}{' (REGRESSION)' if e in comp.exponent_regressions else ''}" for e in comp.exponents]
        lines.append("")
    return lines


def _s(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{x:,.0f}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def previous_night(store: ResultsView, series: str, before_sweep: str) -> str | None:
    """The latest earlier nightly sweep of the same series."""
    names = [s.name for s in store.sweeps()
             if (s.tags or {}).get("nightly") == series and s.name != before_sweep]
    runs = {r.sweep_id for r in store.nightly_runs()}
    done = [s for s in store.sweeps() if s.name in names and s.id in runs]
    return done[-1].name if done else None
