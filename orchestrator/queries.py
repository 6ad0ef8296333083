"""Read-side views of the results store, shared by the CLI and reports."""

from __future__ import annotations

import math

from varbench.orchestrator.store import ResultsView, trial_point
from varbench.sweeps.convergence import CONVERGED, UNCHECKED
from varbench.sweeps.frontier import N_BOOT, frontier_intervals
from varbench.workers.errors import UserError


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def interval_text(ci: list, censored: str = "not reached") -> str:
    """[lo, hi] of N*, with ``censored`` for a bound the resamples did not reach."""
    lo, hi = ci
    if lo is None:
        return "-"
    return f"[{lo:,.0f}, {hi:,.0f}]" if hi is not None else f"[{lo:,.0f}, {censored}]"


def frontier_rows(store: ResultsView, sweep: str, n_boot: int = N_BOOT,
                  cell_id: int | None = None) -> list[dict]:
    """One row per (cell, ε): N* with its interval, the trial and its config, or the
    censored point.

    ``n_star_ci`` is the 95% interval of N* (``sweeps.frontier.frontier_intervals``:
    whole trials and seed replicas resampled; it contains the point); None for a
    bound that is "not reached" in the resamples. ``cell_id``: that cell's rows only
    (the other cells' bootstraps are not paid for). ``steps`` and ``recipe``: the
    training budget the point is conditional on. ``verdict`` (converged,
    budget-limited, unchecked) and ``converged`` (True, False, None): the
    convergence check (``sweeps.convergence``), applied only while the point's
    N* trial is still the one judged; ``check`` holds its figures.
    """
    row = store.sweep(sweep)
    if row is None:
        raise UserError("SWEEP", f"no sweep named {sweep!r} in the results store")
    out = []
    for cell in store.cells(row.id):
        if cell_id is not None and cell.id != cell_id:
            continue
        rows = store.trials(cell.id)
        trials = {t.number: t for t in rows}
        ref = (cell.reference or {}).get("affine", {})
        points = store.frontier(cell.id)
        judged = {v.eps: v for v in store.verdicts(cell.id)}
        recipe = cell_recipe(cell, rows)
        iv = frontier_intervals([trial_point(t) for t in rows], [p.eps for p in points], n_boot)
        for p in points:
            t = trials.get(p.trial_number) if p.trial_number is not None else None
            cfg = t.config if t is not None else {}
            lo, hi = iv.get(p.eps, (math.inf, math.inf))
            v = judged.get(p.eps)
            if v is None or v.trial_number != p.trial_number:  # not judged, or N* moved since
                v = None
            verdict = v.verdict if v is not None else UNCHECKED
            out.append({
                "cell": cell.study_name, "variant": cell.variant, "family": cell.family,
                "target": cell.target, "lipschitz": cell.lipschitz, "eps": p.eps,
                "reached": p.reached, "n_star": p.n_star,
                "n_star_ci": [_finite(lo), _finite(hi)],
                "n_eff": (t.result or {}).get("n_params_eff") if t is not None else None,
                "trial": p.trial_number,
                "steps": recipe.get("steps"), "recipe": recipe,
                "verdict": verdict,
                "converged": None if verdict == UNCHECKED else verdict == CONVERGED,
                "check": dict(v.detail) if v is not None else None,
                "err_ucb": t.err_ucb if t is not None else None,
                # inference FLOPs per sample of the N* model (FlowAR: at this setting)
                "flops": t.flops if t is not None else None,
                "best_err": p.best_err, "max_n_tried": p.max_n_tried, "n_trials": p.n_trials,
                "affine_err": ref.get("err_ucb"),
                "lipschitz_emp": (cell.reference or {}).get("lipschitz", {}).get("empirical"),
                "config": {k: cfg.get(k) for k in ("width", "scales", "interp", "heads", "depth",
                                                    "ffn_ratio", "flow_steps", "flow_solver",
                                                    "flow_source", "lr", "replicas")}
                if cfg else {},
            })
    return out


def cell_recipe(cell, trials) -> dict:
    """The cell's recipe as stored (cells from before it was stored: read off a trial's
    config; the schedule has always been warm-up then cosine)."""
    if cell.budget:
        return dict(cell.budget)
    cfg = next((t.config for t in trials if t.config), {})
    return {k: cfg.get(k) for k in ("steps", "batch_size", "lr", "warmup")} | {
        "schedule": "warmup-cosine"} if cfg else {}


def recipe_text(recipe: dict) -> str:
    """``400 steps · batch 64 · lr 0.01 fixed (warm-up 40, cosine to 0)``: at most 72
    characters with a rule or a search (the frontier's caption stays within 80)."""
    if not recipe:
        return "recipe not recorded"
    return (f"{recipe.get('steps')} steps · batch {recipe.get('batch_size')} · "
            f"{lr_text(recipe)} (warm-up {recipe.get('warmup')}, cosine to 0)")


def lr_text(recipe: dict) -> str:
    """How the recipe's lr was chosen: ``lr 0.01 fixed``, ``lr 0.01·(d/32)^-0.5``
    (the per-width rule) or ``lr searched 0.001..0.03``; a recipe stored before the
    choice was recorded reads ``lr 0.01`` (or ``lr searched``)."""
    choice = recipe.get("lr_choice")
    if choice == "rule":
        r = recipe.get("lr_rule") or {}
        return f"lr {recipe.get('lr'):g}·(d/{r.get('ref_width')})^{r.get('exponent'):g}"
    if choice == "searched" or recipe.get("lr_searched"):
        r = recipe.get("lr_range")
        return f"lr searched {r['low']:g}..{r['high']:g}" if r else "lr searched"
    return f"lr {recipe.get('lr'):g}" + (" fixed" if choice == "fixed" else "")


def sweep_status(store: ResultsView, sweep: str | None) -> list[dict]:
    rows = [store.sweep(sweep)] if sweep else store.sweeps()
    if sweep and rows[0] is None:
        raise UserError("SWEEP", f"no sweep named {sweep!r} in the results store")
    out = []
    for s in rows:
        planned = int(s.spec.get("trials", 0))
        for cell in store.cells(s.id):
            trials = store.trials(cell.id)
            out.append({
                "sweep": s.name, "status": s.status, "cell": cell.study_name,
                "model": cell.variant,  # a FlowAR cell's names its inference setting
                "done": len(trials), "planned": planned,
                "failed": sum(t.status == "failed" for t in trials),  # pruned is not failed
            })
    return out
