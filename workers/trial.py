"""Run one trial: one seed alone, or its replicas trained together.

The training itself lives in ``workers.training`` (one model) and
``workers.population`` (R models of one shape at once).
"""

from __future__ import annotations

from dataclasses import replace

from varbench.workers.config import TrialConfig, TrialResult
from varbench.workers.population import run_population
from varbench.workers.training import train_one


def replica_configs(cfg: TrialConfig) -> list[TrialConfig]:
    """The trial's replicas: seeds seed, seed + 1, ... (each alone a 1-replica trial)."""
    return [replace(cfg, seed=cfg.seed + k, replicas=1) for k in range(cfg.replicas)]


def run_trial(cfg: TrialConfig) -> TrialResult:
    """Train and evaluate one trial; never raises for numerical failure.

    With ``replicas`` > 1 the seeds train together (workers.population) and
    the result is the best replica's, with every replica's err_ucb beside it.
    """
    if cfg.replicas == 1:
        return train_one(cfg)
    results = run_population(replica_configs(cfg))
    done = [r for r in results if r.status == "completed"]
    best = min(done, key=lambda r: r.err_ucb) if done else results[0]
    best.replica_err_ucb = [r.err_ucb for r in results]
    best.curves = [c for r in results for c in r.curves]  # one per replica, in replica order
    best.seconds = sum(r.seconds for r in results)
    best.config = cfg.to_dict()
    best.flow_evals = _best_per_setting(results)
    return best


def _best_per_setting(results: list[TrialResult]) -> list[dict]:
    """FlowAR replicas scored at each inference setting: the trial's figure at a setting
    is its best replica there (as its own err is the best replica's), with every
    replica's err_ucb beside it."""
    scored = [r for r in results if r.status == "completed" and r.flow_evals]
    if not scored:
        return []
    out = []
    for i in range(len(scored[0].flow_evals)):
        best = min((r.flow_evals[i] for r in scored), key=lambda e: e["err_ucb"])
        out.append({**best, "replica_err_ucb": [
            r.flow_evals[i]["err_ucb"] if r.status == "completed" and r.flow_evals else None
            for r in results]})
    return out
