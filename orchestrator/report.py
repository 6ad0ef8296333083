"""`varbench report`: a self-contained HTML report and a markdown summary.

The frontier table, the fitted scaling exponents with intervals, and plots
(err vs N with the Pareto front per cell; N* vs ε per L on log-log axes with
the fitted lines; VAR vs FlowAR; interpolation types side by side), written
to the work directory and logged as artifacts on every study's parent run.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from varbench.orchestrator.queries import frontier_rows, interval_text, recipe_text
from varbench.orchestrator.store import ResultsView
from varbench.sweeps.convergence import CONVERGED
from varbench.sweeps.frontier import (
    N_BOOT,
    TrialPoint,
    frontier,
    pareto_front,
)
from varbench.sweeps.scaling import CellTrials, ScalingFit, fit_scaling
from varbench.workers.errors import UserError

# matplotlib is loaded by the first figure (``_mpl``): the driver publishes the
# frontier's markdown from this module after every trial that moves it, and the
# import (about 1 s) used to sit on the sweep's set-up
plt = mticker = mtransforms = None


def _mpl() -> None:
    global plt, mticker, mtransforms
    if plt is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
        import matplotlib.ticker as ticker
        import matplotlib.transforms as transforms

        plt, mticker, mtransforms = pyplot, ticker, transforms


@dataclass
class Report:
    sweep: str
    html_path: Path
    md_path: Path
    fits: list[ScalingFit]
    frontier: list[dict]
    plots: dict[str, str]  # title -> base64 PNG


FIG_WIDTH = 11.0  # inches: at DPI, about 1100 px wide, the width of the report's page
DPI = 100


def _png(fig) -> str:
    _mpl()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def collect(store: ResultsView, sweep: str):
    row = store.sweep(sweep)
    if row is None:
        raise UserError("SWEEP", f"no sweep named {sweep!r} in the results store")
    cells = store.cells(row.id)
    trials = {c.id: store.trials(c.id) for c in cells}
    return row, cells, trials


def _steps(c) -> int | None:
    return (getattr(c, "budget", None) or {}).get("steps")


def scaling_fits(cells, trials, eps, n_boot: int = N_BOOT, verdicts: dict | None = None,
                 converged_only: bool = True) -> list[ScalingFit]:
    """Per (variant, target, interpolation), pooled over interpolation, and pooled
    against the measured L_emp of each cell instead of its certified L; per budget
    where the sweep has several (never pooled across budgets).

    ``verdicts`` (cell id -> its stored verdicts): where a convergence check ran
    (any verdict stored) and ``converged_only``, each cell keeps only its
    converged points, and each fit says how many it dropped."""
    verdicts = verdicts or {}
    checked = converged_only and any(verdicts.values())
    several = len({_steps(c) for c in cells}) > 1
    groups: dict[str, list[CellTrials]] = defaultdict(list)
    for c in cells:
        at = f" / {_steps(c)} steps" if several else ""
        by_interp: dict[str, list[TrialPoint]] = defaultdict(list)
        for t in trials[c.id]:
            tp = TrialPoint(t.number, t.n_params, t.err_ucb, t.status)
            by_interp[(t.config or {}).get("interp", "?")].append(tp)
        keep = None  # a cell no check judged (e.g. a FlowAR setting cell) keeps its points
        if checked and verdicts.get(c.id):
            # a verdict counts only while its trial is still the point's N* trial
            now = {p.eps: p.trial_number for p in frontier(
                [tp for pts in by_interp.values() for tp in pts], eps)}
            keep = frozenset(v.eps for v in verdicts[c.id] if v.verdict == CONVERGED
                             and now.get(v.eps) == v.trial_number)
        for interp, pts in by_interp.items():
            groups[f"{c.variant} / {c.target}{at} / {interp}"].append(
                CellTrials(c.lipschitz, tuple(pts), keep))
        pooled = tuple(tp for pts in by_interp.values() for tp in pts)
        groups[f"{c.variant} / {c.target}{at} / pooled"].append(
            CellTrials(c.lipschitz, pooled, keep))
        l_emp = (c.reference or {}).get("lipschitz", {}).get("empirical")
        if l_emp:  # β against the measured L too: certified labels can be 2x the true L
            groups[f"{c.variant} / {c.target}{at} / pooled, L_emp"].append(
                CellTrials(l_emp, pooled, keep))
    return [fit_scaling(name, cts, eps, n_boot=n_boot) for name, cts in sorted(groups.items())]


def _tick_label(v: float, _pos=None) -> str:
    """Plain numbers where short (0.01, 500, 2000), powers of ten beyond."""
    if v <= 0:
        return ""
    if 1e-3 <= v < 1e5:
        return f"{v:g}"
    exp = math.floor(math.log10(v) + 1e-9)
    mant = v / 10 ** exp
    return f"$10^{{{exp}}}$" if abs(mant - 1) < 1e-6 else f"${mant:g}\\times10^{{{exp}}}$"


def _log_axis(axis) -> None:
    """Labelled major ticks only: decades, or 1-2-5 steps when the data span less than
    about two decades; minor ticks unlabelled (their labels used to overlap)."""
    _mpl()  # loglog_axes is called on others' axes too
    lo, hi = axis.get_view_interval()
    lo, hi = min(lo, hi), max(lo, hi)
    decades = math.log10(hi / lo) if lo > 0 and hi > 0 else 3
    subs = (1.0,) if decades > 2.2 else (1.0, 2.0, 5.0) if decades > 0.8 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    axis.set_major_locator(mticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(mticker.FuncFormatter(_tick_label))
    axis.set_minor_locator(mticker.LogLocator(base=10, subs=tuple(range(1, 10))))
    axis.set_minor_formatter(mticker.NullFormatter())


def loglog_axes(ax, xlabel: str, ylabel: str, title: str, legend_size: int = 9,
            outside: bool = False) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axis(ax.xaxis)
    _log_axis(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", color="0.9", lw=0.8)
    if ax.get_legend_handles_labels()[0]:
        where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {"loc": "best"}
        ax.legend(fontsize=legend_size, framealpha=0.9, **where)


def _eps_lines(ax, eps) -> None:
    """The ε grid as dotted lines, each labelled at the right edge."""
    _mpl()
    trans = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
    for e in eps:
        ax.axhline(e, color="0.55", lw=0.8, ls=":")
        ax.text(1.005, e, f"ε={e:g}", transform=trans, fontsize=8, color="0.35",
                va="center", ha="left", clip_on=False)


def _grid(n: int, height: float):
    _mpl()  # every figure starts here
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(FIG_WIDTH, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, axes


def _l_colours(values) -> dict[float, str]:
    """One colour per Lipschitz constant, the same in every plot of a report."""
    return {L: f"C{i}" for i, L in enumerate(sorted(set(values)))}


MARKERS = "osD^vP*X"


def plot_err_vs_n(cells, trials, eps) -> str:
    """One panel per (model variant, target): every completed trial, coloured by L and
    shaped by interpolation, each L's Pareto front, the ε grid and the best affine map."""
    groups: dict[tuple, list] = defaultdict(list)
    several = len({_steps(c) for c in cells}) > 1
    for c in cells:  # one panel per budget too: two budgets never share a front
        groups[(c.variant, c.target, _steps(c) if several else None)].append(c)
    colours = _l_colours(c.lipschitz for c in cells)
    interps = sorted({(t.config or {}).get("interp", "?") for ts in trials.values() for t in ts})
    marker = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(interps)}
    fig, axes = _grid(len(groups), 5.0)
    for ax, ((variant, target, steps), group) in zip(axes.flat, sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0))):
        plotted = False
        for c in sorted(group, key=lambda c: c.lipschitz):
            col = colours[c.lipschitz]
            done = [t for t in trials[c.id] if t.status == "completed" and t.err_ucb]
            plotted = plotted or bool(done)
            for interp in interps:
                ts = [t for t in done if (t.config or {}).get("interp", "?") == interp]
                if ts:
                    ax.scatter([t.n_params for t in ts], [t.err_ucb for t in ts], s=28,
                               color=col, marker=marker[interp], alpha=0.75, linewidths=0)
            front = pareto_front(TrialPoint(t.number, t.n_params, t.err_ucb, t.status) for t in done)
            if front:
                ax.step([p.n_params for p in front], [p.err_ucb for p in front], where="post",
                        color=col, lw=1.4, label=f"L={c.lipschitz:g} Pareto front")
            ref = (c.reference or {}).get("affine", {}).get("err_ucb")
            if ref:
                ax.axhline(ref, color=col, lw=1.0, ls="--", label=f"L={c.lipschitz:g} best affine map")
        for interp in interps if len(interps) > 1 else []:
            ax.scatter([], [], color="0.4", marker=marker[interp], label=interp)
        _eps_lines(ax, eps)
        if not plotted:  # every trial failed: a log axis with no data has no range
            sizes = [t.n_params for c in group for t in trials[c.id] if t.n_params]
            ax.set_xlim(min(sizes) / 2, max(sizes) * 2) if sizes else ax.set_xlim(1, 10)
            ax.text(0.5, 0.5, "no completed trial", transform=ax.transAxes, ha="center",
                    va="center", color="0.35")
        at = f", {steps} steps" if steps else ""
        loglog_axes(ax, "N (trainable parameters)", "err_ucb",
                    f"{variant} on {target}{at}: error vs size")
    return _png(fig)


VERDICT_MARKS = {  # how each verdict is drawn: converged filled, budget-limited open
    "converged": {"marker": "o", "ms": 7, "label": "converged (N* holds at the larger budget)"},
    "budget-limited": {"marker": "o", "ms": 7, "mfc": "none", "mew": 1.6,
                       "label": "budget-limited (N* moves at the larger budget)"},
    "unchecked": {"marker": "s", "ms": 5, "alpha": 0.6, "label": "unchecked"},
}


def _verdict_points(ax, pts: list[dict], col: str, seen: set) -> None:
    """Reached points drawn by verdict (``VERDICT_MARKS``)."""
    for verdict, style in VERDICT_MARKS.items():
        mine = [r for r in pts if r.get("verdict", "unchecked") == verdict]
        if mine:
            kw = {k: v for k, v in style.items() if k != "label"}
            ax.plot([r["eps"] for r in mine], [r["n_star"] for r in mine], ls="none",
                    color=col, **kw)
            seen.add(verdict)


def _verdict_legend(ax, seen: set) -> None:
    shown = seen if seen - {"unchecked"} else set()  # all unchecked: no verdict legend
    for verdict in VERDICT_MARKS:
        if verdict in shown:
            kw = {k: v for k, v in VERDICT_MARKS[verdict].items() if k != "label"}
            ax.plot([], [], ls="none", color="0.3", label=VERDICT_MARKS[verdict]["label"], **kw)


def _group_key(group: str) -> tuple[str, str, int | None]:
    """(variant, target, steps) of a fit group ``var / mlp[ / 400 steps] / pooled``."""
    parts = [p.strip() for p in group.split("/")]
    steps = int(parts[2].split()[0]) if len(parts) == 4 else None
    return parts[0], parts[1], steps


def plot_nstar_vs_eps(fits: list[ScalingFit], rows: list[dict] | None = None) -> str | None:
    """N* vs ε per L on log-log axes with the fitted law; reached points marked by their
    convergence verdict (filled: converged, open: budget-limited, squares: unchecked);
    ε not reached (censored) drawn as open triangles at the largest N tried: N* is
    above it, if it exists."""
    pooled = [f for f in fits if f.group.endswith("/ pooled") and (f.points or rows)]
    if not pooled:
        return None
    rows = rows or []
    colours = _l_colours([L for f in pooled for L, _, _ in f.points] + [r["lipschitz"] for r in rows])
    fig, axes = _grid(len(pooled), 5.0)
    for ax, f in zip(axes.flat, pooled):
        variant, target, steps = _group_key(f.group)
        mine = [r for r in rows if r["variant"] == variant and r["target"] == target
                and (steps is None or r.get("steps") == steps)]
        fitted = defaultdict(list)
        for L, e, n in f.points:
            fitted[L].append((e, n))
        ls = sorted(set(fitted) | {r["lipschitz"] for r in mine})
        seen: set = set()
        for k, L in enumerate(ls):
            col = colours[L]
            nudge = 1 + 0.03 * (k - (len(ls) - 1) / 2)  # censored markers of each L side by side
            reached = sorted((r for r in mine if r["lipschitz"] == L and r["reached"]),
                             key=lambda r: r["eps"])
            if reached:
                ax.plot([r["eps"] for r in reached], [r["n_star"] for r in reached], "-",
                        color=col, lw=0.6, alpha=0.5, label=f"L={L:g}")
                _verdict_points(ax, reached, col, seen)
            elif fitted.get(L):  # fits of groups without rows (per-interpolation groups)
                pts = sorted(fitted[L])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=col, ms=6,
                        label=f"L={L:g}")
            if f.gamma is not None and fitted.get(L):
                es = sorted({p[0] for p in fitted[L]})
                line = [math.exp(f.a + (f.beta or 0) * math.log(L) - f.gamma * math.log(e)) for e in es]
                ax.plot(es, line, "-", color=col, lw=1.2)
            cens = [r for r in mine if r["lipschitz"] == L and not r["reached"] and r["max_n_tried"]]
            if cens:
                ax.plot([r["eps"] * nudge for r in cens], [r["max_n_tried"] for r in cens], "^", color=col,
                        mfc="none", ms=9, mew=1.4)
        _verdict_legend(ax, seen)
        if any(not r["reached"] for r in mine):
            ax.plot([], [], "^", color="0.3", mfc="none", ms=9, mew=1.4,
                    label="not reached: N* above the\nlargest N tried (censored)")
        title = f.group + (f" (fit on converged points; {f.n_dropped} dropped)" if f.n_dropped else "")
        loglog_axes(ax, "ε (target accuracy)", "N* (smallest N reaching ε under this budget)",
                    title, outside=True)
        grid = sorted({r["eps"] for r in mine} | {e for _, e, _ in f.points})
        if grid:  # the ε grid itself as the labelled ticks
            ax.xaxis.set_major_locator(mticker.FixedLocator(grid))
            ax.xaxis.set_minor_locator(mticker.NullLocator())
    return _png(fig)


def plot_budgets(rows: list[dict]) -> str | None:
    """N*(ε) per budget, one panel per (variant, target, L): whether the frontier still
    moves as the budget grows. Only for sweeps with several budgets."""
    budgets = sorted({r.get("steps") for r in rows if r.get("steps")})
    if len(budgets) < 2:
        return None
    keys = sorted({(r["variant"], r["target"], r["lipschitz"]) for r in rows})
    fig, axes = _grid(len(keys), 4.6)
    for ax, (variant, target, L) in zip(axes.flat, keys):
        seen: set = set()
        for i, steps in enumerate(budgets):
            pts = sorted((r for r in rows if (r["variant"], r["target"], r["lipschitz"]) ==
                          (variant, target, L) and r.get("steps") == steps and r["reached"]),
                         key=lambda r: r["eps"])
            if pts:
                ax.plot([r["eps"] for r in pts], [r["n_star"] for r in pts], "-", color=f"C{i}",
                        lw=1.2, label=f"{steps} steps")
                _verdict_points(ax, pts, f"C{i}", seen)
        _verdict_legend(ax, seen)
        loglog_axes(ax, "ε", "N* under the budget", f"{variant} · {target} · L={L:g}")
    return _png(fig)


def plot_family_compare(rows: list[dict]) -> str | None:
    fams = {r["family"] for r in rows}
    if len(fams) < 2:
        return None
    keys = sorted({(r["target"], r["lipschitz"]) for r in rows})
    fig, axes = _grid(len(keys), 4.6)
    for ax, (tgt, L) in zip(axes.flat, keys):
        for i, var in enumerate(sorted({r["variant"] for r in rows})):
            pts = [(r["eps"], r["n_star"]) for r in rows
                   if r["variant"] == var and r["target"] == tgt and r["lipschitz"] == L and r["reached"]]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=var)
        loglog_axes(ax, "ε", "N*", f"{tgt} L={L:g}")
    return _png(fig)


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _ci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else f"{v:.3g} (no interval)"


def fits_markdown(fits: list[ScalingFit]) -> list[str]:
    lines = ["| group | points | β (L) | γ (1/ε) | note |", "|---|---|---|---|---|"]
    for f in fits:
        lines.append(f"| {f.group} | {f.n_points} | {_ci(f.beta, f.beta_ci)} | "
                     f"{_ci(f.gamma, f.gamma_ci)} | {f.note or ''} |")
    return lines


def frontier_markdown(rows: list[dict]) -> list[str]:
    several = len({r.get("steps") for r in rows}) > 1
    lines = ["| model | target | " + ("steps | " if several else "") +
             "L | ε | N* | 95% interval | N eff | trial | err_ucb | converged | "
             "config / censored | best affine err |",
             "|---|---|" + ("---|" if several else "") + "---|---|---|---|---|---|---|---|---|---|"]
    def steps(r: dict) -> str:
        return f"{r.get('steps')} | " if several else ""

    for r in rows:
        c = r["config"]
        ci = interval_text(r["n_star_ci"])
        if r["reached"]:
            cfg = f"d={c.get('width')} K={c.get('scales')} {c.get('interp')}"
            if r["family"] == "flowar":
                cfg += (f" steps={c.get('flow_steps')} {c.get('flow_solver') or 'euler'} "
                        f"source={c.get('flow_source') or 'interp'} "
                        f"FLOPs={r.get('flops') or 0:,}")
            if c.get("lr") is not None:  # the lr this trial trained at (recipe: how chosen)
                cfg += f" lr={c['lr']:.2g}"
            n_eff = f"{r['n_eff']:,}" if r.get("n_eff") else "-"
            lines.append(f"| {r['variant']} | {r['target']} | {steps(r)}{r['lipschitz']:g} | "
                         f"{r['eps']:g} | {r['n_star']:,} | {ci} | {n_eff} | {r['trial']} | "
                         f"{_fmt(r['err_ucb'])} | {r.get('verdict', 'unchecked')} | "
                         f"{cfg} | {_fmt(r['affine_err'])} |")
        else:
            lines.append(f"| {r['variant']} | {r['target']} | {steps(r)}{r['lipschitz']:g} | "
                         f"{r['eps']:g} | not reached | {ci} | - | - | - | - | best err "
                         f"{_fmt(r['best_err'])}, largest N {r['max_n_tried'] or 0:,} | "
                         f"{_fmt(r['affine_err'])} |")
    return lines


def recipe_markdown(rows: list[dict]) -> list[str]:
    """The recipe of each budget, listed with the frontier."""
    recipes = {}
    for r in rows:
        recipes.setdefault(r.get("steps"), r.get("recipe") or {})
    return [f"- Recipe{f' ({s} steps)' if len(recipes) > 1 else ''}: {recipe_text(rc)}"
            for s, rc in sorted(recipes.items(), key=lambda kv: kv[0] or 0)]


def convergence_markdown(rows: list[dict]) -> list[str]:
    """How many reached points held when the budget grew, and why the others did not."""
    reached = [r for r in rows if r["reached"]]
    counts = {v: sum(r.get("verdict") == v for r in reached)
              for v in ("converged", "budget-limited", "unchecked")}
    if counts["unchecked"] == len(reached):
        return ["Convergence: no check ran (spec `check: {enabled: true}` retrains each point "
                "at 2x the budget); every N* here is conditional on the budget."]
    factor = next((r["check"]["factor"] for r in reached if r.get("check")), 2)
    out = [f"Convergence at {factor}x the budget: {counts['converged']} of {len(reached)} "
           f"reached points converged, {counts['budget-limited']} budget-limited, "
           f"{counts['unchecked']} unchecked. Scaling fits use the converged points only.", ""]
    for r in reached:
        if r.get("check") and r.get("verdict") != "converged":
            out.append(f"- {r['cell']} ε={r['eps']:g}: {r['verdict']}: {r['check'].get('reason')}")
    return out


def affine_notes(rows: list[dict]) -> list[str]:
    """Cells whose best error stays above the best affine map, said as measured.

    Not "a plateau": the same page lists N* for the ε the cell does reach, and
    a longer budget may still move it (SPEC §1).
    """
    out = []
    seen = set()
    for r in rows:
        key = r["cell"]
        if key in seen or r["best_err"] is None or r["affine_err"] is None:
            continue
        seen.add(key)
        if r["best_err"] > r["affine_err"]:
            out.append(f"- {key}: best error {r['best_err']:.3g} stays "
                       f"{r['best_err'] / r['affine_err']:.3g}× above the best affine map "
                       f"{r['affine_err']:.3g}, at every size tried (up to N = "
                       f"{r['max_n_tried']:,}) under this budget.")
    return out


def mask_notes(rows: list[dict]) -> list[str]:
    """At depth 1 the block-causal mask changes nothing; say so beside those results."""
    if any(r["family"] == "var" and (r["config"] or {}).get("depth") == 1 for r in rows):
        return ["- At depth 1 (the theorem's form) the block-causal mask has no effect: only "
                "the last scale's outputs are read, and its queries see every key. FLOPs "
                "count only what is read."]
    return []


def build_report(store: ResultsView, sweep: str, out_dir: Path, n_boot: int = N_BOOT,
                 extra_md: list[str] | None = None,
                 fits: list[ScalingFit] | None = None) -> Report:
    """``fits`` may be passed when the caller already computed them (nightly)."""
    row, cells, trials = collect(store, sweep)
    eps = row.spec["eps"]
    rows = frontier_rows(store, sweep, n_boot=n_boot)
    if fits is None:
        fits = scaling_fits(cells, trials, eps, n_boot=n_boot,
                            verdicts={c.id: store.verdicts(c.id) for c in cells})
    plots = {"Error vs N with the Pareto front, per cell": plot_err_vs_n(cells, trials, eps)}
    p = plot_nstar_vs_eps(fits, rows)
    if p:
        plots["N* vs ε per L (log-log) with the fitted law"] = p
    p = plot_budgets(rows)
    if p:
        plots["N*(ε) per training budget: does the frontier still move?"] = p
    p = plot_family_compare(rows)
    if p:
        plots["Model families side by side (N* vs ε)"] = p
    md = [f"# varbench report: {sweep}", "",
          f"Status {row.status}; commit {row.tags.get('commit', 'unknown')}; "
          f"{sum(len(v) for v in trials.values())} trials in {len(cells)} cells.", "",
          "## Frontier N*(ε, L) under this training budget", "",
          "N* is the smallest N that reaches ε under the training budget and recipe "
          "below, not a property of the architecture alone: a longer budget may move it.", "",
          *recipe_markdown(rows), "", *frontier_markdown(rows), "",
          *convergence_markdown(rows), "",
          "## Scaling law log N* = a + β log L − γ log ε (Huber fit, 95% bootstrap intervals)", "",
          *fits_markdown(fits), ""]
    above = affine_notes(rows)
    if above:
        md += ["## Cells that stay above the best affine map", "", *above, ""]
    notes = mask_notes(rows)
    if notes:
        md += ["## Notes", "", *notes, ""]
    if extra_md:
        md += extra_md
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(sweep, md, plots))
    return Report(sweep, html_path, md_path, fits, rows, plots)


def _html(sweep: str, md: list[str], plots: dict[str, str]) -> str:
    body = []
    in_table = False
    for line in md:
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set(line.replace("|", "").strip()) <= {"-"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<p>• {html.escape(line[2:])}</p>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    body.append("<h2>Plots</h2>")
    for title, b64 in plots.items():
        body.append(f"<h3>{html.escape(title)}</h3><img alt=\"{html.escape(title)}\" "
                    f"src=\"data:image/png;base64,{b64}\">")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{width:100%;height:auto}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>varbench report: "
            f"{html.escape(sweep)}</title><style>{style}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
