"""Samplers by name, and our frontier-seeking sampler.

``FrontierSampler`` is a real ``optuna.samplers.BaseSampler`` for studies with
objectives (N, err). It aims trials at the current frontier: for each ε not
yet reached, or reached but not tight, it probes sizes between the largest
failing and the smallest reaching width (a bisection in log width, one per
ε, easiest ε first). Settings other than width are copied from the trial that
bounds the interval, or, with probability ``explore``, left to random
sampling. At the lowest width, where no bisection can go further, the other
categorical combinations are tried as soon as a trial there came near an ε
it missed (``_bottom``). Once an ε's interval is tight, the categorical
settings (K, interpolation, ...) not yet tried at its largest failing width are tried
there, one combination a trial: at the boundary they move N* too. When every
ε is tight and enumerated, or censored, it samples at random, never repeating
a configuration already run; once every ε is reached, those random widths stay
at or below the width of the largest N* (``_useful_high``): a larger model
cannot lower any N*, so a trial there is spent on nothing the frontier shows.
That holds where width alone sets N (``cap_width``): not where depth, the FFN
ratio or LayerNorm are searched too, nor for FlowAR, whose study is told the
best error over its inference settings while each setting has a frontier.
Pruned trials count as tried sizes that reached no ε.

Where the sampler picks a width and nothing else (its start-up trials, and a
probe with no trial to copy or sent exploring), the settings in
``small_first`` take their lowest value instead of a random one: the scale
count K, whose every extra scale adds parameters (a level embedding) and
tokens (a slower trial), so a probe is the smallest, cheapest model of its
width; interpolation and the rest stay random. Measured on quick.yaml's
exhaustive grids (benchmarks/sampler_compare.py, 20 x 20 seed pairs against
10 random trials, which is what the peer's OptunaSearch runs; trials one at
a time, the grid without noise): at least as small at every ε in 96% → 100%
of pairs at L = 1 and 25% → 35% at L = 2.

The bisections go easiest ε first. The largest ε's N* lies at the smallest
widths: the cheapest trials, and where 10 random trials land most often.
Hardest first spent a quick sweep's trials on the widest, slowest models
(the smallest ε) and, with two workers and seed noise, often never went below
the start-up widths: twice in a row on quick.yaml the peer's N*(0.1, L = 2)
was 250 against our 367. With per-trial noise (err × e^N(0, 0.1)) and two
workers in flight (``sampler_compare --noise 0.1 --workers 2``), easiest first
is at least as small as 10 random trials at every ε in 33% → 71% of pairs at
L = 1 and 6% → 10% at L = 2 (random against random: 16% and 4%).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from varbench.workers.errors import UserError

# searched settings that change N at a given width (heads do not: width is rounded to them)
N_SETTINGS = frozenset({"depth", "ffn_ratio", "layernorm"})


class FrontierSampler(BaseSampler):
    def __init__(
        self,
        eps: Sequence[float],
        size_param: str = "width",
        n_startup: int = 3,
        ratio_tol: float = 1.25,
        explore: float = 0.2,
        seed: int | None = None,
        cap_width: bool = True,
        near: float = 1.3,
        bottom_tries: int = 4,
        space: dict[str, BaseDistribution] | None = None,
        small_first: Sequence[str] = ("scales",),
    ):
        self._eps = sorted(float(e) for e in eps)
        self._size = size_param
        self._n_startup = n_startup
        self._ratio_tol = ratio_tol
        self._explore = explore
        self._cap = cap_width
        self._near, self._bottom_tries = near, bottom_tries
        # the study's space, for its first trials: Optuna infers the relative space from
        # earlier trials, so without it the first trial (two with two workers) was random
        self._space = dict(space) if space else {}
        self._small_first = tuple(small_first)
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def repeats_after(self, space: dict[str, BaseDistribution]) -> float:
        """How many trials of ``space`` it asks before it may repeat a configuration
        (``_novel``): all of them (``math.inf`` with a float dimension). A sampler
        without this method may repeat one at any time."""
        if not all(isinstance(d, (optuna.distributions.CategoricalDistribution,
                                  IntDistribution)) for d in space.values()):
            return math.inf
        return math.prod(_n_values(d) for d in space.values())

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        for t in reversed(study.get_trials(deepcopy=False)):
            if self._size in t.distributions:
                return dict(t.distributions)
        return dict(self._space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        dist = search_space.get(self._size)
        if not isinstance(dist, IntDistribution):
            return {}
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        pending = [t for t in trials if t.state == TrialState.RUNNING and self._size in t.params]
        # a pruned trial was stopped above every ε it could still matter for: a failing size
        pending += [t for t in trials if t.state == TrialState.PRUNED and self._size in t.params]
        if len(done) + len(pending) < self._n_startup:
            i = len(done) + len(pending)
            frac = (i + 0.5) / self._n_startup
            w = round(math.exp(math.log(dist.low) + frac * (math.log(dist.high) - math.log(dist.low))))
            return self._smallest({self._size: int(min(max(w, dist.low), dist.high))},
                                  search_space)
        bottom = self._bottom(done, pending, search_space, dist)
        if bottom is not None:
            return bottom
        probe = self._probe(done, pending, dist)
        if probe is None:
            probe = self._boundary(done, pending, search_space)
        if probe is None:
            space = dict(search_space)
            high = self._useful_high(done, dist) if self._cap else None
            if high is not None:
                space[self._size] = IntDistribution(dist.low, high, log=dist.log)
            return self._novel(trials, space, study, trial)
        width, template = probe
        if isinstance(template, dict):  # a categorical combination to try at the boundary
            return {self._size: width, **template}
        params: dict[str, Any] = {self._size: width}
        if template is not None and self._rng.rand() >= self._explore:
            for name, value in template.params.items():
                d = search_space.get(name)
                if name != self._size and d is not None and d._contains(d.to_internal_repr(value)):
                    params[name] = value
            return params
        return self._smallest(params, search_space)

    def _smallest(self, params: dict[str, Any],
                  space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """``params`` plus the lowest value of each ``small_first`` setting it lacks."""
        for name in self._small_first:
            d = space.get(name)
            if name not in params and isinstance(d, IntDistribution):
                params[name] = d.low
        return params

    def _bottom(self, done, pending, space: dict[str, BaseDistribution],
                dist: IntDistribution) -> dict[str, Any] | None:
        """Another categorical combination at the lowest width, while a trial there
        came within ``near`` of an ε it has not reached (at most ``bottom_tries``
        trials there). No width lies below to bisect towards, so only K and
        interpolation can still lower N* there, and these are the cheapest
        trials of all. Measured against quick.yaml's exhaustive grids with
        benchmarks/sampler_compare.py (figures in the README's sampler section):
        more ε points exact after 10 trials at L = 1, the same at L = 2."""
        names = self._categoricals(space)
        at_low = [t for t in done if t.params.get(self._size) == dist.low]
        if not names or not at_low:
            return None
        best = min(t.values[1] for t in at_low)
        if not any(e < best <= self._near * e for e in self._eps):
            return None
        tried = {tuple(t.params.get(n) for n in names) for t in done + pending
                 if t.params.get(self._size) == dist.low}
        if len(tried) >= self._bottom_tries:
            return None
        for combo in itertools.product(*(_values(space[n]) for n in names)):
            if combo not in tried:
                return {self._size: dist.low, **dict(zip(names, combo))}
        return None

    def _probe(self, done, pending, dist: IntDistribution):
        size = self._size
        busy = {t.params[size] for t in pending} | {t.params[size] for t in done}
        tried_max = max(busy)
        for eps in reversed(self._eps):  # easiest first: see the module docstring
            reach = [t for t in done if t.values[1] <= eps]
            if not reach:
                if tried_max >= dist.high:
                    continue  # censored at the top of the range
                best = min(done, key=lambda t: t.values[1]) if done else None
                return int(min(dist.high, max(tried_max * 2, tried_max + 1))), best
            top = min(reach, key=lambda t: (t.params[size], t.values[1]))
            w_r = top.params[size]
            below = [t.params[size] for t in done if t.values[1] > eps and t.params[size] < w_r]
            below += [t.params[size] for t in pending if t.params[size] < w_r]
            lo = max(below) if below else None
            if lo is None:
                if w_r <= dist.low:
                    continue
                cand = max(dist.low, int(round(math.sqrt(dist.low * w_r))))
                if w_r / dist.low <= self._ratio_tol:
                    cand = dist.low
            else:
                if w_r / lo <= self._ratio_tol or w_r - lo < 2:
                    continue
                cand = min(max(int(round(math.sqrt(lo * w_r))), lo + 1), w_r - 1)
            if cand not in busy:
                return cand, top
        return None

    def _useful_high(self, done, dist: IntDistribution) -> int | None:
        """The widest width that can still move the frontier, when every ε is reached:
        that of the trial holding the largest N* (equal width, other K or
        interpolation, may still come out smaller). None while some ε is open."""
        holders = []
        for eps in self._eps:
            reach = [t for t in done if t.values[1] <= eps]
            if not reach:
                return None
            holders.append(min(reach, key=lambda t: (t.values[0], t.values[1])))
        return max(dist.low, min(dist.high, max(t.params[self._size] for t in holders)))

    def _categoricals(self, space: dict[str, BaseDistribution]) -> list[str]:
        return sorted(n for n, d in space.items() if n != self._size
                      and isinstance(d, (optuna.distributions.CategoricalDistribution,
                                         IntDistribution)) and _n_values(d) <= 16)

    def _boundary(self, done, pending, space: dict[str, BaseDistribution]):
        """An untried categorical combination at an ε's largest failing width."""
        names = self._categoricals(space)
        if not names:
            return None
        size = self._size
        tried = {(t.params.get(size), *(t.params.get(n) for n in names)) for t in done + pending}
        for eps in self._eps:
            reach = [t for t in done if t.values[1] <= eps]
            if not reach:
                continue
            w_r = min(t.params[size] for t in reach)
            below = [t.params[size] for t in done + pending if t.params[size] < w_r]
            if not below:
                continue
            w = max(below)
            for combo in itertools.product(*(_values(space[n]) for n in names)):
                if (w, *combo) not in tried:
                    return w, dict(zip(names, combo))
        return None

    def _novel(self, trials, space: dict[str, BaseDistribution], study: Study,
               trial: FrozenTrial, attempts: int = 50) -> dict[str, Any]:
        """Random parameters for every setting, not equal to any trial's so far."""
        seen = {tuple(sorted(t.params.items())) for t in trials if t.params}
        params: dict[str, Any] = {}
        for _ in range(attempts):
            params = {n: self._random.sample_independent(study, trial, n, d)
                      for n, d in space.items()}
            if tuple(sorted(params.items())) not in seen:
                return params
        return params  # the space is (nearly) exhausted: a repeat is all there is

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


def _values(d: BaseDistribution) -> list:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return list(d.choices)
    return list(range(d.low, d.high + 1, d.step or 1))


def _n_values(d: BaseDistribution) -> int:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return len(d.choices)
    return (d.high - d.low) // (d.step or 1) + 1


def grid_values(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """A finite grid over a search space: powers of two for log ints, ends and middle else."""
    grid: dict[str, list] = {}
    for name, d in space.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, IntDistribution):
            if d.log:
                vals = {d.low, d.high} | {2**k for k in range(12) if d.low <= 2**k <= d.high}
            else:
                vals = set(range(d.low, d.high + 1))
            grid[name] = sorted(vals)
        else:
            lo, hi = d.low, d.high
            grid[name] = sorted({lo, math.sqrt(lo * hi) if d.log else (lo + hi) / 2, hi})
    return grid


def make_sampler(
    name: str, eps: Sequence[float], space: dict[str, BaseDistribution], seed: int,
    family: str = "var",
) -> BaseSampler:
    """Samplers by name: frontier (ours), tpe, nsga2, gp, random, grid."""
    if name == "frontier":
        return FrontierSampler(eps, seed=seed, cap_width=family != "flowar" and not (
            set(space) & N_SETTINGS), space=space)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    raise UserError("sampler", f"unknown sampler {name!r}")
