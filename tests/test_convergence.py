"""Converged frontiers: the convergence check's verdicts, continued trials, budgets as cells.

The sweeps here plant their outcomes: the driver's Ray tasks are replaced by
functions of the config (N and err_ucb from the width), so a verdict is known
in advance and no model trains. Continuation itself is tested on a real tiny
trial.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import ray
from typer.testing import CliRunner

from tests.conftest import tiny_spec
from varbench.orchestrator import driver as driver_mod
from varbench.orchestrator.cli import app
from varbench.orchestrator.driver import run_sweep
from varbench.orchestrator.queries import frontier_rows
from varbench.orchestrator.report import build_report
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsStore
from varbench.orchestrator.tracking import Tracker
from varbench.sweeps.convergence import (
    BUDGET_LIMITED,
    CONVERGED,
    FAILING,
    REACHING,
    UNCHECKED,
    judge,
    plan_checks,
)
from varbench.sweeps.frontier import TrialPoint, frontier
from varbench.sweeps.spec import load_spec
from varbench.workers.config import TrialConfig
from varbench.workers.training import train_one

STEPS = 30  # tests/specs/tiny.yaml's budget
MARGIN = 0.002  # planted err_ucb - err: each trial's interval


# --- the verdict, from planted check outcomes -------------------------------------------

def _cell():
    trials = [TrialPoint(0, 100, 0.30, "completed"), TrialPoint(1, 200, 0.15, "completed"),
              TrialPoint(2, 400, 0.08, "completed"), TrialPoint(3, 150, 0.5, "failed")]
    eps = [0.2, 0.1]
    return trials, frontier(trials, eps)


def test_plan_takes_the_largest_completed_trial_below_nstar():
    trials, points = _cell()
    plans = {p.reaching: p for p in plan_checks(trials, points)}
    assert plans[1].failing == 0 and plans[1].eps == (0.2,)  # the failed N=150 is no neighbour
    assert plans[2].failing == 1 and plans[2].eps == (0.1,)


def test_neighbour_reaching_at_twice_the_budget_is_budget_limited_else_converged():
    trials, points = _cell()
    plans = plan_checks(trials, points)
    originals = {n: {"err": e - MARGIN, "err_ucb": e} for n, e in ((1, 0.15), (2, 0.08))}
    checks = {(REACHING, 1): {"status": "completed", "err_ucb": 0.1505},  # within its interval
              (FAILING, 0): {"status": "completed", "err_ucb": 0.25},  # still fails 0.2
              (REACHING, 2): {"status": "completed", "err_ucb": 0.0801},
              (FAILING, 1): {"status": "completed", "err_ucb": 0.09}}  # now reaches 0.1
    v = {x.eps: x for x in judge(points, plans, checks, originals, 2)}
    assert v[0.2].verdict == CONVERGED and v[0.2].converged is True
    assert v[0.1].verdict == BUDGET_LIMITED and v[0.1].converged is False
    assert "trial 1" in v[0.1].reason


def test_a_reaching_trial_that_moves_beyond_its_interval_is_budget_limited():
    trials, points = _cell()
    originals = {n: {"err": e - MARGIN, "err_ucb": e} for n, e in ((1, 0.15), (2, 0.08))}
    checks = {(REACHING, 1): {"status": "completed", "err_ucb": 0.12},  # moved 0.03 > 0.002
              (FAILING, 0): {"status": "completed", "err_ucb": 0.25}}
    v = {x.eps: x for x in judge(points, plan_checks(trials, points), checks, originals, 2)}
    assert v[0.2].verdict == BUDGET_LIMITED
    assert v[0.1].verdict == UNCHECKED and v[0.1].converged is None  # its checks never ran


# --- continuing a finished trial -----------------------------------------------------------

def test_a_continued_trial_resumes_from_its_checkpoint_and_its_curve_goes_on():
    cfg = TrialConfig(width=4, steps=20, warmup=2, eval_every=10, n_eval=64, eps=(1e-9,),
                      keep_checkpoint=True, seed=2)
    first = train_one(cfg)
    assert first.status == "completed" and first.steps_run == 20 and first.checkpoint
    more = train_one(replace(cfg, steps=40, keep_checkpoint=False), resume=first.checkpoint)
    assert more.steps_run == 40 and more.checkpoint is None
    assert more.recipe["continued_from"] == 20 and more.recipe["planned_before"] == 20
    curve, old = more.curves[0], first.curves[0]
    steps = [s for s, _ in curve["loss"]]
    assert steps[:len(old["loss"]) - 1] == [s for s, _ in old["loss"]][:-1]  # the old curve
    assert max(steps) == 40 and any(s > 20 for s in steps)  # ... going on past its budget
    assert [s for s, _ in curve["monitor_err_ucb"]] == [10, 20, 30, 40]
    # the cosine re-stretched to 40 and resumed at step 20: the lr is back up, then anneals
    lr_after = [v for s, v in curve["lr"] if s > 20]
    assert lr_after[0] > 0.3 * cfg.lr and lr_after[-1] < lr_after[0]
    assert more.err_ucb != pytest.approx(first.err_ucb, rel=1e-4)  # it trained on


# --- sweeps with planted outcomes -----------------------------------------------------------

class Planted:
    """Stand-ins for the driver's Ray tasks: N and err_ucb are functions of the width;
    a check trial (steps not a main budget) gets ``fail_check(err_ucb)`` afresh and
    ``continued(err_ucb)`` when continued. Counts every call."""

    def __init__(self, fail_check, continued, main_steps=(STEPS,)):
        self.fail_check, self.continued, self.main_steps = fail_check, continued, main_steps
        self.calls: list[tuple[str, int, int]] = []  # (kind, width, steps)
        self.resumed: list[bytes] = []

    def result(self, cfg: dict, err_ucb: float | None = None) -> dict:
        w = cfg["width"]
        e = 1.0 / w if err_ucb is None else err_ucb
        return {"status": "completed", "reason": "", "err": e - MARGIN, "err_ucb": e,
                "rel_err": e, "n_params": 100 * w + cfg["scales"], "n_params_eff": 90 * w,
                "flops": 1, "width": w, "steps_run": cfg["steps"], "seconds": 0.0,
                "reached": {repr(x): e <= x for x in cfg["eps"]}, "config": cfg,
                "recipe": {"steps": cfg["steps"]}, "curves": [], "population": 1}

    def trial(self, cfg, threads=1, key=""):
        checking = cfg["steps"] not in self.main_steps
        assert cfg["early_stop"] is not checking  # a check trains its whole budget
        self.calls.append(("fresh-check" if checking else "trial", cfg["width"], cfg["steps"]))
        return self.result(cfg, self.fail_check(1.0 / cfg["width"]) if checking else None)

    def checkpoint(self, cfg, threads=1, key="", resume=None):
        if resume is None:  # a main trial that keeps its state
            self.calls.append(("trial", cfg["width"], cfg["steps"]))
            return self.result(cfg), f"state of width {cfg['width']}".encode()
        assert cfg["early_stop"] is False and not cfg["keep_checkpoint"]
        self.calls.append(("continued", cfg["width"], cfg["steps"]))
        self.resumed.append(resume)
        return self.result(cfg, self.continued(1.0 / cfg["width"])), None

    def population(self, cfgs, threads=1, keys=None):
        return [self.trial(c) for c in cfgs]

    def install(self, monkeypatch):
        class Task:
            def __init__(self, fn):
                self.fn = fn

            def options(self, **_):
                return self

            def remote(self, *args):
                return ray.put(self.fn(*args))

        monkeypatch.setattr(driver_mod, "trial_task", Task(self.trial))
        monkeypatch.setattr(driver_mod, "checkpoint_task", Task(self.checkpoint))
        monkeypatch.setattr(driver_mod, "population_task", Task(self.population))
        monkeypatch.setattr(driver_mod, "reference_task", Task(
            lambda *a: {"affine": {"err": 0.001, "err_ucb": 0.001}}))
        return self


def _sweep(tmp_path, name: str, db: str | None = None, **overrides):
    spec = load_spec(tiny_spec(tmp_path, **{"name": name, "trials": 4, **overrides}))
    return spec, resolve_settings(workdir=str(tmp_path / "work"), db=db)


def _verdicts(settings, spec) -> dict[tuple[str, float], dict]:
    rows = frontier_rows(ResultsStore(settings.db_url), spec.name, n_boot=20)
    return {(r["cell"], r["eps"]): r for r in rows}


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_check_marks_budget_limited_then_converged_and_resume_redoes_nothing(
        tmp_path, ray_local, monkeypatch, request, db):
    url = request.getfixturevalue("pg_url") if db == "postgres" else None
    # every failing neighbour reaches every ε at 2x: each point with one is budget-limited
    loose = Planted(fail_check=lambda e: 0.01, continued=lambda e: e).install(monkeypatch)
    spec, settings = _sweep(tmp_path, "loose", url, check={"enabled": True})
    out = run_sweep(spec, settings)
    assert out.trials_recorded == 8 and out.checks_run > 0
    store = ResultsStore(settings.db_url)
    cells = store.cells(store.sweep("loose").id)
    for cell in cells:  # check trials never count as frontier trials
        assert len(store.trials(cell.id)) == 4
        assert all(t.result["checkpoint"].startswith("checkpoints/loose/") for t in store.trials(cell.id))
    v = _verdicts(settings, spec)
    reached = [r for r in v.values() if r["reached"]]
    assert reached and all(r["verdict"] in (BUDGET_LIMITED, CONVERGED) for r in reached)
    # after the checks only the N* trials' states are left on disk
    kept = 0
    for cell in cells:
        on_disk = {int(p.stem) for p in (settings.workdir / "checkpoints" / "loose" /
                                         cell.study_name.replace(":", "_")).glob("*.pt")}
        assert on_disk == {r["trial"] for r in reached if r["cell"] == cell.study_name}
        kept += len(on_disk)
    assert 0 < kept < 8  # every trial kept one; some were not N*
    with_neighbour = [r for r in reached if r["check"]["failing"] is not None]
    assert with_neighbour and all(r["converged"] is False for r in with_neighbour)
    # the continued trials got the very bytes their trial handed back
    assert loose.resumed and all(b.startswith(b"state of width ") for b in loose.resumed)
    assert {c[2] for c in loose.calls if c[0] != "trial"} == {2 * STEPS}
    # MLflow: the verdict on each parent run
    tracker = Tracker(settings.tracking_uri, "varbench/loose")
    r = with_neighbour[0]
    tags = tracker.client.get_run(tracker.parent_run(r["cell"], {})).data.tags
    assert tags[f"varbench.verdict.eps_{r['eps']:g}"] == BUDGET_LIMITED
    # the report: the verdict per point, the reasons, the recipe, and the fits' note
    rep = build_report(store, "loose", tmp_path / "report", n_boot=20)
    md = rep.md_path.read_text()
    assert "under this training budget" in md and "Recipe: 30 steps" in md
    assert "budget-limited" in md and "reaches ε at 2x the budget" in md
    assert all(r["verdict"] != CONVERGED or r["reached"] for r in rep.frontier)
    pooled = [f for f in rep.fits if f.group.endswith("/ pooled")]
    dropped = sum(r["verdict"] != CONVERGED for r in reached)  # one (model, target): all
    assert len(pooled) == 1 and pooled[0].n_dropped == dropped > 0
    # resume: nothing rerun, no check recorded twice
    n_checks = sum(len(store.checks(c.id)) for c in cells)
    before = len(loose.calls)
    again = run_sweep(spec, settings)
    assert again.trials_run == 0 and again.checks_run == 0 and len(loose.calls) == before
    assert sum(len(store.checks(c.id)) for c in cells) == n_checks
    assert _verdicts(settings, spec) == v

    # neighbours that still fail, and N* trials whose error holds: every point converged
    Planted(fail_check=lambda e: e, continued=lambda e: e + MARGIN / 4).install(monkeypatch)
    spec2, settings2 = _sweep(tmp_path, "tight", url, check={"enabled": True})
    run_sweep(spec2, settings2)
    reached = [r for r in _verdicts(settings2, spec2).values() if r["reached"]]
    assert reached and all(r["verdict"] == CONVERGED and r["converged"] for r in reached)
    res = CliRunner().invoke(app, ["frontier", "tight", "--json", "--workdir",
                                   str(tmp_path / "work")] + (["--db", url] if url else []))
    assert res.exit_code == 0, res.output
    assert {r["converged"] for r in json.loads(res.stdout) if r["reached"]} == {True}
    table = CliRunner().invoke(app, ["frontier", "tight", "--workdir", str(tmp_path / "work")]
                               + (["--db", url] if url else []))
    text = " ".join(table.stdout.split())  # rich wraps at 80 columns
    assert "under this training budget" in text and "recipe: 30 steps" in text


def test_two_budgets_are_two_cells_whose_frontiers_never_mix(tmp_path, ray_local, monkeypatch):
    planted = Planted(fail_check=lambda e: e, continued=lambda e: e,
                      main_steps=(STEPS, 2 * STEPS)).install(monkeypatch)
    spec, settings = _sweep(tmp_path, "budgets", trials=2, budget={
        "steps": [STEPS, 2 * STEPS], "warmup": 5, "eval_every": 10, "n_eval": 128})
    run_sweep(spec, settings)
    store = ResultsStore(settings.db_url)
    cells = store.cells(store.sweep("budgets").id)
    assert len(cells) == 4  # 2 L x 2 budgets
    for cell in cells:
        steps = cell.budget["steps"]
        assert cell.study_name.endswith(f":steps={steps}")
        assert {t.config["steps"] for t in store.trials(cell.id)} == {steps}
    rows = frontier_rows(store, "budgets", n_boot=20)
    assert {r["steps"] for r in rows} == {STEPS, 2 * STEPS}
    assert all(r["recipe"]["steps"] == r["steps"] for r in rows)
    assert {c[2] for c in planted.calls} == {STEPS, 2 * STEPS}
    # `varbench status` at 80 columns tells the budgets' cells apart, one line each
    status = CliRunner().invoke(app, ["status", "budgets", "--db", settings.db_url],
                                env={"COLUMNS": "80"})
    assert status.exit_code == 0, status.output
    lines = status.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for cell in cells:
        short = cell.study_name.removeprefix("budgets:")
        assert sum(short in line for line in lines) == 1, status.stdout
    # a single-budget spec keeps today's study names (its sweeps resume)
    one, _ = _sweep(tmp_path, "one")
    from varbench.orchestrator.studies import study_name
    v, t, L, s = one.cell_keys()[0]
    assert study_name(one, v, t, L, s) == "one:var:mlp:L=1"


def test_the_check_section_leaves_the_spec_hash_alone(tmp_path):
    plain, _ = _sweep(tmp_path, "h")
    checked, _ = _sweep(tmp_path, "h", check={"enabled": True, "factor": 4})
    assert plain.spec_hash() == checked.spec_hash() and checked.check.factor == 4


def test_fits_keep_unjudged_cells_and_drop_outdated_verdicts():
    from types import SimpleNamespace as NS

    from varbench.orchestrator.report import scaling_fits

    def cell(i, lip):
        return NS(id=i, variant="var", target="mlp", lipschitz=lip, reference={}, budget=None)

    def trial(n, size, err):
        return NS(number=n, n_params=size, err_ucb=err, status="completed",
                  config={"interp": "bicubic"})

    eps = [0.1, 0.05]
    cells = [cell(1, 1.0), cell(2, 2.0)]
    trials = {1: [trial(0, 100, 0.08), trial(1, 400, 0.04)],
              2: [trial(0, 300, 0.09), trial(1, 900, 0.045)]}
    # cell 1 judged: ε=0.1 converged for trial 0 (its N*), ε=0.05 converged for a trial
    # that is no longer N* (outdated); cell 2 never judged (e.g. a FlowAR setting cell)
    verdicts = {1: [NS(eps=0.1, verdict=CONVERGED, trial_number=0),
                    NS(eps=0.05, verdict=CONVERGED, trial_number=7)]}
    fits = {f.group: f for f in scaling_fits(cells, trials, eps, n_boot=20, verdicts=verdicts)}
    pooled = fits["var / mlp / pooled"]
    assert pooled.n_dropped == 1  # only the outdated verdict's point
    assert pooled.n_points == 3  # cell 1 at ε=0.1, and both of cell 2's points
