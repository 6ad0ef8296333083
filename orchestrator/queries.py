"""Read-side views of the results store, shared by the CLI and reports."""

from __future__ import annotations

from varbench.orchestrator.store import ResultsView
from varbench.workers.errors import UserError


def frontier_rows(store: ResultsView, sweep: str) -> list[dict]:
    """One row per (cell, ε): N* with the trial and its config, or the censored point."""
    row = store.sweep(sweep)
    if row is None:
        raise UserError("SWEEP", f"no sweep named {sweep!r} in the results store")
    out = []
    for cell in store.cells(row.id):
        trials = {t.number: t for t in store.trials(cell.id)}
        ref = (cell.reference or {}).get("affine", {})
        for p in store.frontier(cell.id):
            t = trials.get(p.trial_number) if p.trial_number is not None else None
            cfg = t.config if t is not None else {}
            out.append({
                "cell": cell.study_name, "variant": cell.variant, "family": cell.family,
                "target": cell.target, "lipschitz": cell.lipschitz, "eps": p.eps,
                "reached": p.reached, "n_star": p.n_star, "trial": p.trial_number,
                "err_ucb": t.err_ucb if t is not None else None,
                "best_err": p.best_err, "max_n_tried": p.max_n_tried, "n_trials": p.n_trials,
                "affine_err": ref.get("err_ucb"),
                "config": {k: cfg.get(k) for k in ("width", "scales", "interp", "heads", "depth",
                                                    "ffn_ratio", "flow_steps", "lr")} if cfg else {},
            })
    return out


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
                "done": len(trials), "planned": planned,
                "failed": sum(t.status != "completed" for t in trials),
            })
    return out
