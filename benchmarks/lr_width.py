"""Does the best learning rate move with width? (issue 13, item 3)

Trains the cells of ``sweeps/quick.yaml`` (theorem-form VAR, ``mlp`` target,
L = 1 and 2, sides 2 -> 8, K = 3, bicubic, the default init) at a spec's budget
(steps, batch, warm-up, n_eval: quick's and nightly's), at every (width, lr) of
a grid and a few seeds, each to the end of its budget (no early stop: the
figure is what the budget reaches). Configs are built by ``sweeps.space.
trial_config`` (as a sweep builds them), then given the grid's lr; the seeds and
lrs of one width train as one population (``workers.population``: stacked
where that pays, one by one otherwise; a per-replica lr does not split it).

It prints, per budget and cell: the median err_ucb over seeds at each (width,
lr), the best lr per width (the grid's argmin, and a parabola through log err
at the argmin and its two neighbours, in log lr), a least-squares fit of
log(best lr) = a + b log(width) (with b per seed and per cell: its spread), and
what the per-width best lr gains over the fixed budget lr at each width, and
whether that moves N*(eps): the smallest width of the grid whose median
err_ucb reaches eps, at the fixed lr vs at each width's best lr. The same
figures go to ``--out`` as JSON. Single-threaded (``torch.set_num_threads(1)``).

The default grid (``GRID``): at quick's budget widths 4-64, six lrs 3e-3..5.6e-2,
2 seeds, L = 1 and 2; at nightly's (3.75x the steps) widths 4, 16, 64, four lrs
5.6e-3..3.2e-2, 1 seed, L = 2. About 25 minutes on one thread of the 2-core CI
machine; ``--quick`` about 1.5 minutes.

    .venv/bin/python -m benchmarks.lr_width [--quick] [--budget quick|nightly|both] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from varbench.sweeps.space import trial_config
from varbench.sweeps.spec import load_spec
from varbench.workers.population import run_population

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"quick": ROOT / "sweeps" / "quick.yaml", "nightly": ROOT / "sweeps" / "nightly.yaml"}
FIXED_LR = 1e-2  # the lr every width of the shipped specs trained at before the rule
LRS = (3e-3, 5.6e-3, 1e-2, 1.8e-2, 3.2e-2, 5.6e-2)
# The default grid per budget, sized to run in about 25 minutes on one thread of the
# 2-core CI machine: the nightly budget trains 3.75x longer, so fewer widths, lrs,
# seeds and one L there (width 64 at 1,500 steps is about 80 s a trial on one thread).
GRID = {"quick": {"widths": (4, 8, 16, 32, 64), "lrs": LRS, "seeds": 2, "lipschitz": (1.0, 2.0)},
        "nightly": {"widths": (4, 16, 64), "lrs": (5.6e-3, 1e-2, 1.8e-2, 3.2e-2), "seeds": 1,
                    "lipschitz": (2.0,)}}
SMALL = {"widths": (4, 16, 64), "lrs": (3e-3, 1e-2, 3.2e-2), "seeds": 1, "lipschitz": (2.0,)}
CELL = {"target": "mlp", "scales": 3, "interp": "bicubic"}  # quick.yaml's cells at K = 3


def configs(spec_path: Path, lipschitz: float, width: int, lrs, seeds: int):
    """One config per (lr, seed) of one width, built as a sweep builds them (with the
    spec's budget and eps grid), then given the grid's lr and trained to the end."""
    spec = load_spec(spec_path)
    variant = spec.cells.models[0]  # the theorem form (quick's only variant, nightly's first)
    out = []
    for lr in lrs:
        for s in range(seeds):
            cfg = trial_config(spec, variant, CELL["target"], lipschitz,
                               {"width": width, "scales": CELL["scales"], "interp": CELL["interp"]},
                               seed=1000 + s)
            out.append(replace(cfg, lr=lr, lr_choice="fixed", early_stop=False, prune=False))
    return out


def run_grid(spec_path: Path, lipschitz: float, widths, lrs, seeds: int) -> dict:
    """err_ucb[width][lr] = [per seed], with n_params per width and the wall time."""
    grid: dict = {}
    n_params: dict = {}
    for w in widths:
        t0 = time.perf_counter()
        cfgs = configs(spec_path, lipschitz, w, lrs, seeds)
        results = run_population(cfgs)
        grid[w] = {}
        for cfg, res in zip(cfgs, results):
            err = res.err_ucb if res.status == "completed" else math.inf
            grid[w].setdefault(cfg.lr, []).append(err)
        n_params[w] = results[0].n_params
        print(f"  L={lipschitz:g} width {w:>3}: {len(cfgs)} trials in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return {"err_ucb": grid, "n_params": n_params}


def run_rule(spec_path: Path, lipschitz: float, widths, rule: tuple[float, int, float],
             seeds: int) -> dict:
    """err_ucb per seed at each width's lr under ``rule`` = (lr at ref, ref width, exponent)."""
    lr_ref, ref, exponent = rule
    out = {}
    for w in widths:
        lr = float(f"{lr_ref * (w / ref) ** exponent:.4g}")  # as Budget.lr_at rounds it
        results = run_population(configs(spec_path, lipschitz, w, (lr,), seeds))
        out[w] = {"lr": lr, "err_ucb": [r.err_ucb if r.status == "completed" else math.inf
                                        for r in results]}
    return out


def rule_lines(a: dict, rule_run: dict, fixed_lr: float, eps, rule) -> tuple[str, dict]:
    """The rule's median err_ucb per width beside the fixed lr's and the grid's best,
    and N*(eps) under the rule."""
    lines = [f"  rule {rule[0]:g} x (w/{rule[1]})^{rule[2]:g}: width, lr, median err_ucb, "
             f"vs {fixed_lr:g}, vs best of grid"]
    out = {"rule": {"lr_at_ref": rule[0], "ref_width": rule[1], "exponent": rule[2]},
           "per_width": {}}
    for w in a["widths"]:
        m = statistics.median(rule_run[w]["err_ucb"])
        fixed = a["gain"][w]["fixed"]
        best = a["gain"][w]["best_grid"]
        out["per_width"][w] = {"lr": rule_run[w]["lr"], "median_err_ucb": m,
                               "raw_err_ucb": rule_run[w]["err_ucb"]}
        lines.append(f"    {w:>5} {rule_run[w]['lr']:>8.3g} {m:>8.4f} {m / fixed:>6.2f}x "
                     f"{m / best:>6.2f}x")
    n_star = {}
    for e in eps:
        w = next((w for w in a["widths"] if out["per_width"][w]["median_err_ucb"] <= e), None)
        n_star[f"{e:g}"] = a["n_params"][w] if w is not None else None
    out["n_star"] = n_star
    lines.append("  N*(eps) over these widths, rule:     "
                 + " ".join(f"{e}:{'n.r.' if n is None else n}" for e, n in n_star.items()))
    return "\n".join(lines), out


def best_lr(errs: dict[float, float]) -> tuple[float, float]:
    """(the grid's argmin, the vertex of a parabola in log lr through log err at the
    argmin and its neighbours; the argmin itself at an edge of the grid)."""
    lrs = sorted(errs)
    i = min(range(len(lrs)), key=lambda k: errs[lrs[k]])
    if 0 < i < len(lrs) - 1 and all(math.isfinite(errs[lrs[k]]) for k in (i - 1, i, i + 1)):
        x = np.log([lrs[i - 1], lrs[i], lrs[i + 1]])
        y = np.log([errs[lrs[i - 1]], errs[lrs[i]], errs[lrs[i + 1]]])
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            return lrs[i], float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    return lrs[i], lrs[i]


def fit_exponent(widths, lrs) -> float | None:
    """Least-squares slope of log(lr) on log(width)."""
    if len(widths) < 2:
        return None
    return float(np.polyfit(np.log(widths), np.log(lrs), 1)[0])


def fit_line(widths, lrs) -> tuple[float, float] | None:
    """(lr at width 32, exponent) of the least-squares line in log-log."""
    if len(widths) < 2:
        return None
    b, a = np.polyfit(np.log(widths), np.log(lrs), 1)
    return float(np.exp(a + b * math.log(32))), float(b)


def analyse(run: dict, lrs, fixed_lr: float, eps) -> dict:
    grid, n_params = run["err_ucb"], run["n_params"]
    widths = sorted(grid)
    seeds = len(next(iter(grid[widths[0]].values())))
    med = {w: {lr: statistics.median(grid[w][lr]) for lr in lrs} for w in widths}
    best = {w: best_lr(med[w]) for w in widths}
    per_seed = []
    for s in range(seeds):
        b = {w: best_lr({lr: grid[w][lr][s] for lr in lrs})[1] for w in widths}
        per_seed.append(fit_exponent(widths, [b[w] for w in widths]))
    line = fit_line(widths, [best[w][1] for w in widths])
    gain = {w: {"fixed": med[w][fixed_lr], "best_grid": med[w][best[w][0]],
                "ratio": med[w][best[w][0]] / med[w][fixed_lr]} for w in widths}

    def n_star(errs_of) -> dict:
        out = {}
        for e in eps:
            w = next((w for w in widths if errs_of(w) <= e), None)
            out[f"{e:g}"] = n_params[w] if w is not None else None
        return out

    return {
        "widths": widths, "n_params": n_params, "seeds": seeds,
        "median_err_ucb": {w: {f"{lr:g}": med[w][lr] for lr in lrs} for w in widths},
        "best_lr_grid": {w: best[w][0] for w in widths},
        "best_lr_refined": {w: best[w][1] for w in widths},
        "fit": {"lr_at_32": line[0], "exponent": line[1]} if line else None,
        "exponent_per_seed": per_seed,
        "gain": gain,
        "n_star_fixed": n_star(lambda w: med[w][fixed_lr]),
        "n_star_best": n_star(lambda w: med[w][best[w][0]]),
    }


def table(name: str, a: dict, lrs, fixed_lr: float) -> str:
    lines = [f"\n{name}: median err_ucb over {a['seeds']} seeds (* best lr of the row)",
             "  width      N  " + " ".join(f"{lr:>8.2g}" for lr in lrs)
             + "   best  refined  gain vs " + f"{fixed_lr:g}"]
    for w in a["widths"]:
        row = a["median_err_ucb"][w]
        cells = []
        for lr in lrs:
            v = row[f"{lr:g}"]
            mark = "*" if lr == a["best_lr_grid"][w] else " "
            cells.append(f"{v:>7.4f}{mark}" if math.isfinite(v) else "    fail ")
        g = a["gain"][w]
        lines.append(f"  {w:>5} {a['n_params'][w]:>6}  " + " ".join(cells)
                     + f" {a['best_lr_grid'][w]:>6.2g} {a['best_lr_refined'][w]:>8.2g}"
                     + f"  {g['ratio']:.2f}x")
    if a["fit"] and len(lrs) > 2:  # a best lr needs a grid (not --rule-only)
        per = ", ".join(f"{b:+.2f}" for b in a["exponent_per_seed"] if b is not None)
        lines.append(f"  fit: best lr = {a['fit']['lr_at_32']:.3g} x (w/32)^"
                     f"{a['fit']['exponent']:+.2f}   (per seed: {per})")

    def fmt(d: dict) -> str:
        return " ".join(f"{e}:{'n.r.' if n is None else n}" for e, n in d.items())

    lines.append(f"  N*(eps) over these widths, lr {fixed_lr:g}: {fmt(a['n_star_fixed'])}")
    lines.append(f"  N*(eps) over these widths, best lr:  {fmt(a['n_star_best'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=("quick", "nightly", "both"), default="both")
    ap.add_argument("--quick", action="store_true",
                    help="a small grid: widths 4, 16, 64; lrs 3e-3, 1e-2, 3.2e-2; 1 seed; L = 2 "
                         "(about 1.5 min at quick's budget)")
    ap.add_argument("--lipschitz", type=float, nargs="+", default=None)
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--lrs", type=float, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--fixed-lr", type=float, default=FIXED_LR,
                    help="the one lr the gains are measured against (default 0.01, what "
                         "every width trained at before budget.lr_rule)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--rule", type=float, nargs=3, metavar=("LR", "REF_WIDTH", "EXPONENT"),
                    default=None, help="also train every width at lr = LR x (w/REF)^EXPONENT")
    ap.add_argument("--rule-only", action="store_true",
                    help="with --rule: train the rule and the fixed lr only (no grid)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from benchmarks.run import machine

    print(f"machine: {machine()} (1 thread used)")
    t_all = time.perf_counter()
    budgets = ("quick", "nightly") if args.budget == "both" else (args.budget,)
    report = {"cell": CELL, "budgets": {}}
    for budget in budgets:
        spec = load_spec(SPECS[budget])
        grid = SMALL if args.quick else GRID[budget]
        fixed = args.fixed_lr
        lrs_b = tuple(sorted(set(args.lrs or grid["lrs"]) | {fixed}))
        widths = tuple(args.widths or grid["widths"])
        seeds = args.seeds or grid["seeds"]
        lips = tuple(args.lipschitz or grid["lipschitz"])
        b = spec.budget
        print(f"\n== {budget}: {b.step_list[0]} steps, batch {b.batch_size}, warm-up "
              f"{b.warmup}, n_eval {b.n_eval}; widths {widths}; {seeds} seed(s)", flush=True)
        report["budgets"][budget] = {"lrs": list(lrs_b), "steps": b.step_list[0], "batch_size": b.batch_size,
                                     "warmup": b.warmup, "n_eval": b.n_eval,
                                     "fixed_lr": fixed, "cells": {}}
        t0 = time.perf_counter()
        for L in lips:
            grid_lrs = (fixed,) if args.rule_only else lrs_b
            run = run_grid(SPECS[budget], L, widths, grid_lrs, seeds)
            a = analyse(run, grid_lrs, fixed, spec.eps)
            a["raw_err_ucb"] = {w: {f"{lr:g}": v for lr, v in row.items()}
                                for w, row in run["err_ucb"].items()}
            report["budgets"][budget]["cells"][f"L={L:g}"] = a
            print(table(f"{budget} · mlp L={L:g} K=3 bicubic", a, grid_lrs, fixed), flush=True)
            if args.rule:
                rule = (args.rule[0], int(args.rule[1]), args.rule[2])
                text, a["rule"] = rule_lines(a, run_rule(SPECS[budget], L, widths, rule, seeds),
                                             fixed, spec.eps, rule)
                print(text, flush=True)
        report["budgets"][budget]["wall_s"] = round(time.perf_counter() - t0, 1)
        # the exponent pooled over cells and seeds: its spread is what the rule stands on
        cells = report["budgets"][budget]["cells"].values()
        exps = [c["fit"]["exponent"] for c in cells if c["fit"] and not args.rule_only]
        seeds_exps = [e for c in cells for e in c["exponent_per_seed"] if e is not None]
        report["budgets"][budget]["exponents"] = {"per_cell": exps, "per_seed": seeds_exps}
        if exps:
            print(f"\n{budget}: exponent per cell {', '.join(f'{e:+.2f}' for e in exps)}; "
                  f"per (cell, seed) {min(seeds_exps):+.2f} .. {max(seeds_exps):+.2f}")
        if args.out:  # after each budget: a long run cut short keeps what it measured
            args.out.write_text(json.dumps(report, indent=2, default=str))
    report["wall_s"] = round(time.perf_counter() - t_all, 1)
    print(f"\nwall time: {report['wall_s']} s (torch threads: 1)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
