"""How many trials does each sampler need to find one cell's frontier?

The cells are quick.yaml's `mlp` cells (L = 1 and 2) on a finite grid (width
4..32 x K in {2, 3} x {bicubic, bilinear}), at quick.yaml's budget and lr
(rule). Every grid point is trained once, with one fixed seed, and cached
(``varbench-work/sampler_grid-L<L>-<spec hash>.json``): the exhaustive
frontier over the grid is the truth, and each sampler then runs against the
cached results, so the comparison counts trials, not noise. A sampler has
"found the frontier" at the first trial after which its frontier (N* for
every ε of the grid, reached or censored) equals the exhaustive one. Beside
that count: after ``--at`` trials (quick.yaml's own number by default), at
how many of the ε points its N* is the exhaustive one. Last, the peer
benchmark's test offline: how often our ``--at`` trials give a frontier at
least as small at every ε as ``--at`` random ones (what the peer's
OptunaSearch samples first), over ``--pairs`` x ``--pairs`` seed pairs, with
``--workers`` trials in flight and per-trial noise on the grid's errors.

    .venv/bin/python -m benchmarks.sampler_compare [--seeds 5] [--budget 80] [--lipschitz 1 2]
        [--pairs 20] [--noise 0.1] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import optuna

from varbench.sweeps.frontier import TrialPoint, frontier
from varbench.sweeps.samplers import make_sampler
from varbench.sweeps.space import search_space, trial_config
from varbench.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "varbench-work"


def _run(cfg_dict: dict) -> tuple[int, float]:
    import torch

    from varbench.workers.config import TrialConfig
    from varbench.workers.trial import run_trial

    torch.set_num_threads(1)
    r = run_trial(TrialConfig.from_dict(cfg_dict))
    return r.n_params, r.err_ucb if r.err_ucb is not None else float("inf")


def grid_results(spec, variant, lipschitz: float = 1.0,
                 workers: int = 2) -> dict[tuple, tuple[int, float]]:
    cache_path = CACHE_DIR / f"sampler_grid-L{lipschitz:g}-{spec.spec_hash()[:12]}.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    space = search_space(spec, variant)
    keys = [(w, k, i) for w in range(space["width"].low, space["width"].high + 1)
            for k in range(space["scales"].low, space["scales"].high + 1)
            for i in space["interp"].choices]
    todo = [key for key in keys if json.dumps(key) not in cache]
    cfgs = [trial_config(spec, variant, "mlp", lipschitz, {"width": w, "scales": k, "interp": i},
                         0).to_dict() for (w, k, i) in todo]
    with ProcessPoolExecutor(workers) as pool:
        for key, res in zip(todo, pool.map(_run, cfgs)):
            cache[json.dumps(key)] = res
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache))
    return {tuple(json.loads(k)): tuple(v) for k, v in cache.items()}


def trials_to_frontier(sampler_name: str, seed: int, spec, variant, table, budget: int,
                       at: int) -> tuple[int | None, int]:
    """Trials until the frontier equals the exhaustive one (None: not within
    ``budget``), and at how many ε it equals it after ``at`` trials."""
    space = search_space(spec, variant)
    truth = [(p.eps, p.n_star) for p in frontier(
        [TrialPoint(i, n, e, "completed") for i, (n, e) in enumerate(table.values())], spec.eps)]
    sampler = make_sampler(sampler_name, spec.eps, space, seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    points: list[TrialPoint] = []
    found, right_at = None, 0
    for n in range(1, max(budget, at) + 1):
        trial = study.ask(space)
        key = (trial.params["width"], trial.params["scales"], trial.params["interp"])
        size, err = table[key]
        study.tell(trial, [float(size), err])
        points.append(TrialPoint(n, size, err, "completed"))
        mine = [(p.eps, p.n_star) for p in frontier(points, spec.eps)]
        if n == at:
            right_at = sum(a == b for a, b in zip(mine, truth))
        if found is None and mine == truth:
            found = n
        if found is not None and n >= at:
            break
    return found, right_at


def frontier_after(sampler, table, spec, space, at: int, noise: float, workers: int,
                   seed: int) -> list[float]:
    """N* per ε (inf: not reached) after ``at`` trials, run as a sweep runs them:
    ``workers`` trials in flight (the oldest finishes first), and each trial's
    error the grid's times e^N(0, noise), for the seed-to-seed spread of real
    trials that the one-seed grid lacks."""
    rng = np.random.RandomState(10_000 + seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    points, running, asked = [], [], 0
    while asked < at or running:
        while len(running) < workers and asked < at:
            running.append(study.ask(space))
            asked += 1
        trial = running.pop(0)
        size, err = table[(trial.params["width"], trial.params["scales"], trial.params["interp"])]
        err *= math.exp(rng.randn() * noise)
        study.tell(trial, [float(size), err])
        points.append(TrialPoint(trial.number, size, err, "completed"))
    return [p.n_star if p.reached else math.inf for p in frontier(points, spec.eps)]


def as_small(ours: list[float], theirs: list[float]) -> bool:
    """The peer benchmark's test: at every ε, ours at most theirs."""
    return all(a <= b for a, b in zip(ours, theirs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=80)
    ap.add_argument("--at", type=int, default=None, help="trials per study (default: the spec's)")
    ap.add_argument("--lipschitz", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--pairs", type=int, default=20, help="seeds per side of the pairwise test")
    ap.add_argument("--noise", type=float, default=0.1, help="per-trial log-normal error noise")
    ap.add_argument("--workers", type=int, default=2, help="trials in flight")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = load_spec(ROOT / "sweeps" / "quick.yaml")
    variant = spec.cells.models[0]
    at = args.at or spec.trials
    for lip in args.lipschitz:
        table = grid_results(spec, variant, lip)
        print(f"\nL={lip:g} grid: {len(table)} configurations; truth: " + ", ".join(
            f"ε={p.eps:g}: N*={p.n_star}" for p in frontier(
                [TrialPoint(i, n, e, "completed") for i, (n, e) in enumerate(table.values())],
                spec.eps)))
        print(f"{'sampler':10s} {'trials to frontier per seed':34s} median | "
              f"ε points right after {at} trials (of {len(spec.eps)}), per seed")
        for name in ("frontier", "tpe", "nsga2", "random"):
            runs = [trials_to_frontier(name, s, spec, variant, table, args.budget, at)
                    for s in range(args.seeds)]
            shown = [str(c) if c is not None else f">{args.budget}" for c, _ in runs]
            capped = [c if c is not None else args.budget + 1 for c, _ in runs]
            right = [r for _, r in runs]
            print(f"{name:10s} {' '.join(shown):34s} {statistics.median(capped):>6g} | "
                  f"{' '.join(map(str, right))} (mean {statistics.mean(right):.1f})")
        # the peer (OptunaSearch, multi-objective TPE) samples its first 10 trials at random
        space = search_space(spec, variant)
        ours = [frontier_after(make_sampler("frontier", spec.eps, space, s), table, spec, space,
                               at, args.noise, args.workers, s) for s in range(args.pairs)]
        peers = [frontier_after(optuna.samplers.RandomSampler(seed=s), table, spec, space, at,
                                args.noise, args.workers, 500 + s) for s in range(args.pairs)]
        pairs = [(a, b) for a in ours for b in peers]
        wins = sum(as_small(a, b) for a, b in pairs)
        lose = [sum(a[i] > b[i] for a, b in pairs) / len(pairs) for i in range(len(spec.eps))]
        print(f"after {at} trials ({args.workers} in flight, noise {args.noise:g}), frontier at "
              f"least as small as random's at every ε: {wins}/{len(pairs)} seed pairs "
              f"({wins / len(pairs):.0%}); larger at ε " + ", ".join(
                  f"{e:g}: {x:.0%}" for e, x in zip(spec.eps, lose)))


if __name__ == "__main__":
    main()
