"""Frontier extraction: N*(ε) per cell from its trials, censored where not reached.

N*(ε) is the smallest N among completed trials that reach ε (err_ucb <= ε),
with the trial that achieved it. Where no trial reaches ε the point says so:
the best err seen and the largest N tried, never a made-up N*.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 300  # bootstrap resamples, for every interval the project reports


@dataclass(frozen=True)
class TrialPoint:
    number: int
    n_params: int
    err_ucb: float | None  # the best replica's, where the trial trained several seeds
    status: str  # "completed" or "failed"
    replica_errs: tuple[float, ...] = ()  # each seed replica's err_ucb (replicas > 1)


@dataclass(frozen=True)
class FrontierPoint:
    eps: float
    reached: bool
    n_star: int | None  # None when not reached (censored)
    trial_number: int | None
    best_err: float | None  # best err_ucb among completed trials
    max_n_tried: int | None  # largest N among completed trials
    n_trials: int

    def to_dict(self) -> dict:
        return asdict(self)


def frontier(trials: Iterable[TrialPoint], eps_grid: Iterable[float]) -> list[FrontierPoint]:
    """One point per ε, largest ε first; ties in N go to the lower error, then the earlier trial."""
    trials = list(trials)
    done = [t for t in trials if t.status == "completed" and t.err_ucb is not None]
    best_err = min((t.err_ucb for t in done), default=None)
    # a pruned trial's size was tried (it reached no ε): it bounds a censored point too
    tried = done + [t for t in trials if t.status == "pruned"]
    max_n = max((t.n_params for t in tried), default=None)
    points = []
    for eps in sorted(set(eps_grid), reverse=True):
        reach = [t for t in done if t.err_ucb <= eps]
        if reach:
            w = min(reach, key=lambda t: (t.n_params, t.err_ucb, t.number))
            points.append(FrontierPoint(eps, True, w.n_params, w.number, best_err, max_n, len(done)))
        else:
            points.append(FrontierPoint(eps, False, None, None, best_err, max_n, len(done)))
    return points


def bar_for(points: list[FrontierPoint], n_params: int) -> float | None:
    """The error a trial of ``n_params`` must beat to move the frontier.

    That is the largest ε that no finished trial of the same or smaller size
    has reached (reaching it would set a new N*); 0.0 when such trials
    reached every ε (nothing this trial reaches can matter); None while no
    trial has finished (no bar yet).
    """
    if not points or points[0].n_trials == 0:
        return None
    open_eps = [p.eps for p in points if not (p.reached and p.n_star <= n_params)]
    return max(open_eps, default=0.0)


def pareto_front(trials: Iterable[TrialPoint]) -> list[TrialPoint]:
    """Completed trials not dominated in (N, err_ucb), sorted by N."""
    done = sorted(
        (t for t in trials if t.status == "completed" and t.err_ucb is not None),
        key=lambda t: (t.n_params, t.err_ucb),
    )
    front, best = [], float("inf")
    for t in done:
        if t.err_ucb < best:
            front.append(t)
            best = t.err_ucb
    return front


def _resample_replicas(t: TrialPoint, rng: np.random.Generator) -> TrialPoint:
    """The trial with its seed replicas resampled: err_ucb = best of R drawn with replacement."""
    errs = [e for e in t.replica_errs if e is not None and math.isfinite(e)]
    if len(errs) < 2 or t.err_ucb is None:
        return t
    best = min(errs[i] for i in rng.integers(0, len(errs), len(errs)))
    return TrialPoint(t.number, t.n_params, best, t.status, t.replica_errs)


def nstar_intervals(trials: list[TrialPoint], eps: list[float], n_boot: int = N_BOOT,
                    seed: int = 0) -> dict[float, tuple[float, float]]:
    """95% bootstrap interval of N*(ε) for one cell; inf where not reached.

    Each draw resamples whole trials (search noise: which sizes the sampler
    happened to try) and, inside a trial with seed replicas, its replicas
    (optimisation noise: which seeds trained well). It does not cover the
    budget: a longer training may move every point.
    """
    rng = np.random.default_rng(seed)
    draws = {e: [] for e in eps}
    if not trials:
        return {e: (math.inf, math.inf) for e in eps}
    for _ in range(n_boot):
        sample = [_resample_replicas(trials[i], rng)
                  for i in rng.integers(0, len(trials), len(trials))]
        for p in frontier(sample, eps):
            draws[p.eps].append(p.n_star if p.reached else math.inf)
    out = {}
    for e, vals in draws.items():
        arr = np.array(vals, dtype=float)
        # no interpolation: inf (not reached) must stay inf, never inf - inf = nan
        out[e] = (float(np.percentile(arr, 2.5, method="lower")),
                  float(np.percentile(arr, 97.5, method="higher")))
    return out


def frontier_intervals(trials: list[TrialPoint], eps: list[float], n_boot: int = N_BOOT,
                       seed: int = 0) -> dict[float, tuple[float, float]]:
    """The interval each frontier point carries: ``nstar_intervals``, widened to hold N*.

    N* is a minimum, so its bootstrap distribution lies mostly at or above it;
    a percentile interval can miss the point itself when the N* trial is one of
    several near-ties. The reported interval always contains the point.
    """
    iv = nstar_intervals(trials, eps, n_boot, seed)
    out = {}
    for p in frontier(trials, eps):
        lo, hi = iv[p.eps]
        if p.reached:
            lo, hi = min(lo, p.n_star), max(hi, p.n_star)
        out[p.eps] = (lo, hi)
    return out
