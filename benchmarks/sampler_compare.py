"""How many trials does each sampler need to find one cell's frontier?

The cell is quick.yaml's L = 1 `mlp` cell on a finite grid (width 4..32 x K in
{2, 3} x {bicubic, bilinear}). Every grid point is trained once, with one
fixed seed, and cached (``varbench-work/sampler_grid.json``): the exhaustive
frontier over the grid is the truth, and each sampler then runs against the
cached results, so the comparison counts trials, not noise. A sampler has
"found the frontier" at the first trial after which its frontier (N* for
every ε of the grid, reached or censored) equals the exhaustive one.

    .venv/bin/python -m benchmarks.sampler_compare [--seeds 5] [--budget 80]
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna

from varbench.sweeps.frontier import TrialPoint, frontier
from varbench.sweeps.samplers import make_sampler
from varbench.sweeps.space import search_space, trial_config
from varbench.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "varbench-work" / "sampler_grid.json"


def _run(cfg_dict: dict) -> tuple[int, float]:
    import torch

    from varbench.workers.config import TrialConfig
    from varbench.workers.trial import run_trial

    torch.set_num_threads(1)
    r = run_trial(TrialConfig.from_dict(cfg_dict))
    return r.n_params, r.err_ucb if r.err_ucb is not None else float("inf")


def grid_results(spec, variant, workers: int = 2) -> dict[tuple, tuple[int, float]]:
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    space = search_space(spec, variant)
    keys = [(w, k, i) for w in range(space["width"].low, space["width"].high + 1)
            for k in range(space["scales"].low, space["scales"].high + 1)
            for i in space["interp"].choices]
    todo = [key for key in keys if json.dumps(key) not in cache]
    cfgs = [trial_config(spec, variant, "mlp", 1.0, {"width": w, "scales": k, "interp": i}, 0).to_dict()
            for (w, k, i) in todo]
    with ProcessPoolExecutor(workers) as pool:
        for key, res in zip(todo, pool.map(_run, cfgs)):
            cache[json.dumps(key)] = res
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache))
    return {tuple(json.loads(k)): tuple(v) for k, v in cache.items()}


def trials_to_frontier(sampler_name: str, seed: int, spec, variant, table, budget: int) -> int | None:
    space = search_space(spec, variant)
    truth = [(p.eps, p.n_star) for p in frontier(
        [TrialPoint(i, n, e, "completed") for i, (n, e) in enumerate(table.values())], spec.eps)]
    sampler = make_sampler(sampler_name, spec.eps, space, seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    points: list[TrialPoint] = []
    for n in range(1, budget + 1):
        trial = study.ask(space)
        key = (trial.params["width"], trial.params["scales"], trial.params["interp"])
        size, err = table[key]
        study.tell(trial, [float(size), err])
        points.append(TrialPoint(n, size, err, "completed"))
        if [(p.eps, p.n_star) for p in frontier(points, spec.eps)] == truth:
            return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=80)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = load_spec(ROOT / "sweeps" / "quick.yaml")
    variant = spec.cells.models[0]
    table = grid_results(spec, variant)
    print(f"grid: {len(table)} configurations; truth: " + ", ".join(
        f"ε={p.eps:g}: N*={p.n_star}" for p in frontier(
            [TrialPoint(i, n, e, "completed") for i, (n, e) in enumerate(table.values())], spec.eps)))
    print(f"{'sampler':10s} {'trials to frontier per seed':40s} median")
    for name in ("frontier", "tpe", "nsga2", "random"):
        counts = [trials_to_frontier(name, s, spec, variant, table, args.budget) for s in range(args.seeds)]
        shown = [str(c) if c is not None else f">{args.budget}" for c in counts]
        capped = [c if c is not None else args.budget + 1 for c in counts]
        print(f"{name:10s} {' '.join(shown):40s} {statistics.median(capped):g}")


if __name__ == "__main__":
    main()
