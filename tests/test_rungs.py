"""Multi-fidelity rungs: each trial pauses at fractions of its budget; the driver goes
on only with those that can still beat their bar as the frontier stands then."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import TINY, tiny_spec
from tests.test_sweep_e2e import check_sweep
from varbench.orchestrator.driver import Cell, Driver, run_sweep
from varbench.orchestrator.rungs import Fidelity
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsView
from varbench.orchestrator.tracking import Tracker
from varbench.sweeps.frontier import TrialPoint, frontier
from varbench.sweeps.spec import SpecError, load_spec, parse_spec
from varbench.workers.config import TrialConfig
from varbench.workers.stopping import rung_steps
from varbench.workers.training import train_one


def test_rungs_fall_on_monitor_evaluations_inside_the_budget():
    assert rung_steps([0.25, 0.5], 400, 50) == [100, 200]
    assert rung_steps([0.3], 400, 50) == [150]  # rounded up: never before the fraction
    assert rung_steps([0.25, 0.3], 40, 10) == [10, 20]
    assert rung_steps([0.9], 40, 20) == []  # on the end: nothing left to pause for
    assert rung_steps([], 400, 50) == []


def test_a_rung_prunes_only_what_the_stopping_rule_would():
    fid = Fidelity(stops=[100, 200])
    paused = {"status": "completed", "paused": True, "steps_run": 100, "monitor_err": 0.05,
              "seconds": 0.3}
    assert fid.judge(paused, bar=0.04, steps=400) is None  # 1.25x: within 1.1 x 1.9
    assert fid.stops == [200] and fid.passed[-1]["verdict"] == "continued"
    late = {**paused, "steps_run": 200, "monitor_err": 0.09, "seconds": 0.25}
    why = fid.judge(late, bar=0.04, steps=400)
    assert why is not None and why.startswith("rung at step 200:") and "bar 0.04" in why
    rec = fid.pruned(late, why)
    assert rec["status"] == "pruned" and not rec["paused"] and rec["pruned_at"] == 200
    assert rec["seconds"] == pytest.approx(0.55)  # every segment's compute
    again = Fidelity(stops=[100])
    again.judge({**paused, "compile_seconds": 2.0}, bar=0.04, steps=400)
    final = again.finish({"status": "completed", "seconds": 1.0, "compile_seconds": 1.5})
    assert final["seconds"] == pytest.approx(1.3) and final["compile_seconds"] == 3.5
    assert [r["verdict"] for r in rec["rungs"]] == ["continued", "pruned"]
    assert Fidelity(stops=[100]).judge(paused, bar=None, steps=400) is None  # no bar yet


@pytest.mark.parametrize("budget,words", [
    ({"prune": True, "rungs": [0.1]}, "in [0.25, 1)"),
    ({"prune": True, "rungs": [0.5, 0.25]}, "must increase"),
    ({"prune": True, "rungs": [1.0]}, "in [0.25, 1)"),
    ({"rungs": [0.5]}, "need prune: true"),
    ({"prune": True, "rungs": [0.5], "replicas": 2}, "need replicas: 1"),
    ({"prune": True, "rungs": [0.75]}, "fall on the end or on one another"),  # 22.5 -> 30 of 30
    ({"prune": True, "rungs": [0.5, 0.6]}, "pause at [20]"),  # 15 and 18 -> 20 both
])
def test_bad_rungs_are_one_line_naming_the_field(budget, words):
    d = yaml.safe_load(TINY.read_text())
    d["budget"].update(budget)
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    assert len(exc.value.problems) == 1, exc.value.problems
    assert exc.value.problems[0].startswith("budget") and words in exc.value.problems[0]


def test_the_driver_prunes_at_a_rung_by_the_bar_as_it_stands_then(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, budget={"steps": 40, "warmup": 5, "eval_every": 10,
                                                 "n_eval": 128, "prune": True,
                                                 "rungs": [0.25]}))
    driver = Driver(spec, resolve_settings(workdir=str(tmp_path / "work")))
    cfg = TrialConfig(width=8, steps=40, eval_every=10, eps=spec.eps)
    cell = Cell(1, "tiny:var:mlp:L=1", spec.cells.models[0], "mlp", 1.0, study=None)
    paused = {"status": "completed", "paused": True, "steps_run": 10, "monitor_err": 0.15,
              "seconds": 0.1}
    # handed out when nothing had finished; a smaller trial has since reached every ε
    cell.points = frontier([TrialPoint(0, 10, 0.01, "completed")], spec.eps)
    driver._fidelity[(1, 5)] = Fidelity(stops=[10])
    [(_, _, rec)] = driver._at_rungs(
        [(cell, SimpleNamespace(number=5), cfg.to_dict(), paused, b"state", driver._fidelity[(1, 5)])],
        [])
    assert rec["status"] == "pruned" and "bar 0" in rec["reason"] and not driver._resumes
    # with every ε still open below it, the same trial goes on from a file
    cell.points = frontier([TrialPoint(0, 10**6, 0.01, "completed")], spec.eps)
    driver._fidelity[(1, 6)] = Fidelity(stops=[10])
    assert driver._at_rungs(
        [(cell, SimpleNamespace(number=6), cfg.to_dict(), paused, b"state", driver._fidelity[(1, 6)])],
        []) == []
    [(_, trial, _, rel)] = driver._resumes
    assert trial.number == 6 and (tmp_path / "work" / rel).read_bytes() == b"state"
    assert cell.in_flight == 1  # still held by the driver: the study cannot ask past it


def test_sweep_with_rungs_continues_trials_to_the_uninterrupted_result(tmp_path, ray_local):
    budget = {"steps": 40, "warmup": 5, "eval_every": 10, "n_eval": 128, "prune": True,
              "rungs": [0.25, 0.5]}
    spec = load_spec(tiny_spec(tmp_path, name="rungs", budget=budget, trials=4))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    out = run_sweep(spec, settings)
    assert out.trials_recorded == 8
    check_sweep(spec, settings, 4)  # one row, one ended MLflow run, no RUNNING trial each
    view = ResultsView(settings.db_url)
    rows = [t for c in view.cells(view.sweep("rungs").id) for t in view.trials(c.id)]
    went_on = [t for t in rows if t.result.get("rungs")
               and all(r["verdict"] == "continued" for r in t.result["rungs"])
               and t.result["steps_run"] == 40 and t.status == "completed"]
    assert went_on, [(t.status, t.result.get("rungs")) for t in rows]
    for t in went_on[:2]:  # paused twice, resumed from files, equal to one straight run
        assert [r["step"] for r in t.result["rungs"]] == [10, 20]
        cfg = replace(TrialConfig.from_dict(t.config), bar=None)
        straight = train_one(cfg)
        assert t.result["err_ucb"] == pytest.approx(straight.err_ucb, rel=1e-6)
        ours, theirs = t.result["curves"][0]["loss"], straight.to_dict()["curves"][0]["loss"]
        assert [s for s, _ in ours] == [s for s, _ in theirs]  # the curve goes on, whole
        assert [v for _, v in ours] == pytest.approx([v for _, v in theirs], rel=1e-6)
    for t in rows:  # a trial the rule stopped inside a segment keeps the rungs it passed
        if t.status == "pruned" and t.result.get("rungs"):
            assert t.result["steps_run"] >= t.result["rungs"][-1]["step"]
    assert not list((tmp_path / "work" / "checkpoints").rglob("*.pt"))  # states go at the end
    run = Tracker(settings.tracking_uri, "varbench/rungs").client.get_run(went_on[0].mlflow_run_id)
    assert run.data.tags["varbench.rungs"] == "10:continued 20:continued"
