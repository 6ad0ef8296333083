"""How often would frontier-aware stopping have stopped a trial that then moved
the frontier? Runs a spec with pruning off: every trial still gets its bar and
records the step where the rule would have fired (``pruned_at``), and trains
to the end. A wrong prune is a trial the rule would have stopped whose final
err_ucb came in at or below its bar. The rule stays on where the rate is
under 5% (issue 16). It also prints the calibration the rule stands on: at
each fraction of the budget, the largest factor by which a trial's monitor
error still fell to the end (``workers.stopping.IMPROVEMENT``), over this run.

    .venv/bin/python -m benchmarks.prune_check [--spec sweeps/quick.yaml] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from varbench.orchestrator.driver import run_sweep
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsView
from varbench.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "sweeps" / "quick.yaml"))
    ap.add_argument("--trials", type=int, default=None, help="trials per study (default: the spec's)")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    update = {"name": f"{spec.name}-prunecheck-{os.getpid()}",
              "budget": spec.budget.model_copy(update={"prune": False})}
    if args.trials:
        update["trials"] = args.trials
    spec = spec.model_copy(update=update)
    with tempfile.TemporaryDirectory(prefix="varbench-prune-") as work:
        settings = resolve_settings(workdir=work)
        t0 = time.perf_counter()
        run_sweep(spec, settings)
        wall = time.perf_counter() - t0
        view = ResultsView(settings.db_url)
        cells = [sorted(view.trials(c.id), key=lambda t: t.id)  # in the order recorded
                 for c in view.cells(view.sweep(spec.name).id)]
        rows = [t for cell in cells for t in cell]
    fired = [t for t in rows if t.result.get("pruned_at") is not None]
    wrong = [t for t in fired if t.err_ucb is not None and t.config.get("bar") is not None
             and t.err_ucb <= t.config["bar"]]
    saved = sum(t.config["steps"] - t.result["pruned_at"] for t in fired)
    total = sum(t.steps_run for t in rows)
    print(json.dumps({
        "improvement": improvement_table(rows),
        "rung_25pct": rung_check(cells, list(spec.eps)),
        "spec": args.spec, "trials": len(rows), "wall_s": round(wall, 1),
        "would_prune": len(fired), "wrong_prunes": len(wrong),
        "wrong_rate": len(wrong) / len(fired) if fired else None,
        "steps_saved": saved, "steps_run": total,
        "steps_saved_fraction": saved / total if total else None,
        "wrong": [{"trial": t.number, "n_params": t.n_params, "bar": t.config["bar"],
                   "err_ucb": t.err_ucb, "pruned_at": t.result["pruned_at"]} for t in wrong],
    }, indent=2))


def rung_check(cells, eps: list[float], frac: float = 0.25) -> dict:
    """What multi-fidelity could save: a rung at ``frac`` of the budget that judges each
    trial against the freshest bar there could be (every trial recorded before it
    finished) with the stopping rule's bound. Trials whose bar is 0 (a smaller trial
    reached every ε) are counted apart: the sampler no longer asks for them."""
    from varbench.sweeps.frontier import TrialPoint, bar_for, frontier
    from varbench.workers.stopping import SAFETY, improvement_bound

    stop, wrong, saved, zero, steps = 0, 0, 0, 0, 0
    for trials in cells:
        for i, t in enumerate(trials):
            steps += t.steps_run
            prev = [TrialPoint(u.number, u.n_params, u.err_ucb, u.status) for u in trials[:i]]
            bar = bar_for(frontier(prev, eps), t.n_params)
            at = {int(s): float(e) for s, e in (t.result.get("curves") or [{}])[0]
                  .get("monitor_err_ucb", [])}
            err = at.get(int(frac * t.config["steps"]))
            if bar is None or err is None:
                continue
            if bar == 0:
                zero += 1
            elif err > SAFETY * improvement_bound(frac) * bar:
                stop += 1
                saved += t.steps_run - int(frac * t.config["steps"])
                wrong += int(t.err_ucb is not None and t.err_ucb <= bar)
    return {"would_stop": stop, "wrong": wrong, "steps_saved": saved, "steps_run": steps,
            "bar_zero_trials": zero}


def improvement_table(rows, fracs=(0.25, 0.375, 0.5, 0.75)) -> dict[str, float | None]:
    """Largest monitor err at ``frac`` of the budget over the trial's final err_ucb:
    how much a completed trial still gained from there (to its budget, or to its early
    stop at the smallest ε)."""
    out: dict[str, float | None] = {}
    for frac in fracs:
        ratios = []
        for t in rows:
            if t.err_ucb is None or t.status != "completed" or not t.result.get("curves"):
                continue
            at = {int(s): float(e) for s, e in t.result["curves"][0]["monitor_err_ucb"]}
            err = at.get(int(frac * t.config["steps"]))
            if err is not None:
                ratios.append(err / t.err_ucb)
        out[f"{frac:g}"] = round(max(ratios), 3) if ratios else None
    return out


if __name__ == "__main__":
    main()
