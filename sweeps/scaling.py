"""Scaling-law fits: log N* = a + β·log L − γ·log ε on reached frontier points.

The fit is robust (Huber loss on log N*, by iteratively reweighted least
squares from several starts, keeping the lowest loss). Intervals are 95%
percentile intervals from a bootstrap that resamples whole trials within
each cell and recomputes the frontier, so the noise of the search itself is
in them. When the points cannot identify the law the fit says so instead of
printing numbers: fewer than 4 reached points, one N* shared by all of them,
or a single L (no β) or a single ε (no γ); a parameter that cannot be
identified is reported as None. Where a convergence check ran, a cell keeps
only its converged points (``CellTrials.keep_eps``) and the fit says how many
reached points it dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from varbench.sweeps.frontier import N_BOOT, TrialPoint, frontier

MIN_POINTS = 4
HUBER_DELTA = 0.3  # in log N units: ~35% relative error before down-weighting


@dataclass(frozen=True)
class CellTrials:
    """The trials of one cell (or of one interpolation type within it)."""

    lipschitz: float
    trials: tuple[TrialPoint, ...]
    # the ε whose points may enter the fit (the converged ones); None: every reached point
    keep_eps: frozenset[float] | None = None


@dataclass
class ScalingFit:
    group: str
    n_points: int
    a: float | None = None
    beta: float | None = None
    gamma: float | None = None
    a_ci: tuple[float, float] | None = None
    beta_ci: tuple[float, float] | None = None
    gamma_ci: tuple[float, float] | None = None
    note: str = ""
    n_dropped: int = 0  # reached points left out: not judged converged
    points: list[tuple[float, float, int]] = field(default_factory=list)  # (L, ε, N*)

    @property
    def ok(self) -> bool:
        return self.gamma is not None or self.beta is not None

    def to_dict(self) -> dict:
        return asdict(self)


def reached_points(cells: Sequence[CellTrials], eps: Sequence[float],
                   all_points: bool = False) -> list[tuple[float, float, int]]:
    """(L, ε, N*) of each reached point a cell keeps (``all_points``: every reached one)."""
    pts = []
    for c in cells:
        for p in frontier(c.trials, eps):
            if p.reached and (all_points or c.keep_eps is None or p.eps in c.keep_eps):
                pts.append((c.lipschitz, p.eps, p.n_star))
    return pts


def _huber_irls(x: np.ndarray, y: np.ndarray, start: np.ndarray, iters: int = 50) -> tuple[np.ndarray, float]:
    coef = start.copy()
    for _ in range(iters):
        r = y - x @ coef
        w = np.where(np.abs(r) <= HUBER_DELTA, 1.0, HUBER_DELTA / np.maximum(np.abs(r), 1e-12))
        sw = np.sqrt(w)
        new, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
        if np.allclose(new, coef, atol=1e-10):
            coef = new
            break
        coef = new
    r = np.abs(y - x @ coef)
    loss = float(np.sum(np.where(r <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (r - 0.5 * HUBER_DELTA))))
    return coef, loss


def _design(points, use_l: bool, use_eps: bool) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(points, dtype=float)
    cols = [np.ones(len(arr))]
    if use_l:
        cols.append(np.log(arr[:, 0]))
    if use_eps:
        cols.append(-np.log(arr[:, 1]))
    return np.stack(cols, axis=1), np.log(arr[:, 2])


def fit_points(points, use_l: bool, use_eps: bool, starts: int = 5, seed: int = 0) -> np.ndarray:
    """Huber fit from several starts (OLS and random perturbations); lowest loss wins."""
    x, y = _design(points, use_l, use_eps)
    ols, *_ = np.linalg.lstsq(x, y, rcond=None)
    rng = np.random.default_rng(seed)
    best, best_loss = None, np.inf
    for i in range(starts):
        start = ols if i == 0 else ols + rng.normal(0, 1.0, size=ols.shape)
        coef, loss = _huber_irls(x, y, start)
        if loss < best_loss - 1e-12:
            best, best_loss = coef, loss
    return best


def _unpack(coef: np.ndarray, use_l: bool, use_eps: bool) -> tuple[float, float | None, float | None]:
    i = 1
    beta = gamma = None
    if use_l:
        beta = float(coef[i])
        i += 1
    if use_eps:
        gamma = float(coef[i])
    return float(coef[0]), beta, gamma


def fit_scaling(
    group: str,
    cells: Sequence[CellTrials],
    eps: Sequence[float],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> ScalingFit:
    points = reached_points(cells, eps)
    dropped = len(reached_points(cells, eps, all_points=True)) - len(points)
    fit = ScalingFit(group=group, n_points=len(points), points=points, n_dropped=dropped)
    kept = (f"dropped {dropped} reached point(s) not judged converged" if dropped else "")
    if len(points) < MIN_POINTS:
        fit.note = "; ".join(filter(None, [
            f"too few reached points ({len(points)} < {MIN_POINTS}) for a meaningful fit", kept]))
        return fit
    if len({p[2] for p in points}) < 2:
        fit.note = "; ".join(filter(None, [
            "every reached point has the same N* (one trial decides them all): nothing to fit",
            kept]))
        return fit
    use_l = len({p[0] for p in points}) > 1
    use_eps = len({p[1] for p in points}) > 1
    if not (use_l or use_eps):
        fit.note = "; ".join(filter(None, [
            "one L and one ε among the reached points: nothing to fit", kept]))
        return fit
    notes = []
    if not use_l:
        notes.append("one L: β not identifiable")
    elif len({p[0] for p in points}) == 2:
        notes.append("β from only two values of L: a slope through two points, not a law")
    if not use_eps:
        notes.append("one ε: γ not identifiable")
    elif len({p[1] for p in points}) == 2:
        notes.append("γ from only two values of ε: a slope through two points, not a law")
    fit.a, fit.beta, fit.gamma = _unpack(fit_points(points, use_l, use_eps, seed=seed), use_l, use_eps)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        resampled = [
            CellTrials(c.lipschitz, tuple(c.trials[j] for j in rng.integers(0, len(c.trials), len(c.trials))),
                       c.keep_eps)
            for c in cells if c.trials
        ]
        bp = reached_points(resampled, eps)
        if len(bp) < MIN_POINTS:
            continue
        bl = len({p[0] for p in bp}) > 1
        be = len({p[1] for p in bp}) > 1
        if bl != use_l or be != use_eps:
            continue
        draws.append(_unpack(fit_points(bp, use_l, use_eps, starts=2, seed=seed), use_l, use_eps))
    if len(draws) >= max(20, n_boot // 4):
        arr = np.array([[d[0], d[1] if d[1] is not None else np.nan, d[2] if d[2] is not None else np.nan]
                        for d in draws])
        ci = lambda col: (float(np.nanpercentile(arr[:, col], 2.5)), float(np.nanpercentile(arr[:, col], 97.5)))  # noqa: E731
        fit.a_ci = ci(0)
        fit.beta_ci = ci(1) if use_l else None
        fit.gamma_ci = ci(2) if use_eps else None
    else:
        notes.append(f"only {len(draws)} of {n_boot} bootstrap draws were fittable: no intervals")
    fit.note = "; ".join(notes + ([kept] if kept else []))
    return fit
