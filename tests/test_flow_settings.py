"""FlowAR inference settings on the driver side (issue 12, item 3): flow_steps and
the solver are never searched; each trained FlowAR is scored at every setting, and
each setting is its own frontier with its own FLOPs (sweeps.inference)."""

from __future__ import annotations

import json

import optuna
import pytest
import ray
from optuna.trial import TrialState
from sqlalchemy import delete
from typer.testing import CliRunner

from tests.conftest import tiny_spec
from varbench.orchestrator import driver as driver_mod
from varbench.orchestrator.cli import app
from varbench.orchestrator.driver import run_sweep
from varbench.orchestrator.nightly import compare
from varbench.orchestrator.queries import sweep_status
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsStore, TrialRow
from varbench.orchestrator.tracking import Tracker
from varbench.sweeps.inference import cheapest, setting_result, told_error
from varbench.sweeps.space import search_space, trial_config
from varbench.sweeps.spec import SpecError, load_spec, parse_spec
from varbench.workers import trial as trial_mod
from varbench.workers.config import TrialConfig

BASE = {"name": "fs", "cells": {"models": ["flowar"], "targets": ["mlp"], "lipschitz": [1.0]},
        "eps": [0.1]}
LABELS = ["flowar-det · 1 step euler", "flowar-det · 2 steps euler", "flowar-det · 4 steps euler"]


def test_flow_settings_are_not_searched_and_the_trial_monitors_the_cheapest():
    spec = parse_spec({**BASE, "search": {"flow_steps": [4, 1, 2], "flow_solvers": ["heun", "euler"]}})
    variant = spec.cells.models[0]
    space = search_space(spec, variant)
    assert "flow_steps" not in space and "flow_solver" not in space
    cfg = trial_config(spec, variant, "mlp", 1.0, {"width": 8, "scales": 2, "interp": "bicubic"}, 0)
    # cheapest first: velocity evaluations per scale (Heun: 2 a step), then fewer steps
    assert cfg.flow_evals == ("1:euler", "1:heun", "2:euler", "2:heun", "4:euler", "4:heun")
    assert (cfg.flow_steps, cfg.flow_solver) == (1, "euler")
    assert cheapest(["4:euler", "2:heun", "3:euler"]) == "3:euler"
    # the default: the default solver only; a bad solver is named by its field
    assert parse_spec(BASE).search.flow_solvers == [TrialConfig().flow_solver]
    with pytest.raises(SpecError, match=r"search\.flow_solvers\.0"):
        parse_spec({**BASE, "search": {"flow_solvers": ["rk4"]}})


def test_what_optuna_is_told_and_each_setting_row():
    evals = [{"flow_steps": s, "flow_solver": "euler", "err": e, "err_ucb": e + 0.01,
              "rel_err": e, "flops": 100 * s, "reached": {"0.1": e + 0.01 <= 0.1}}
             for s, e in ((1, 0.2), (2, 0.05), (4, 0.05))]
    result = {"status": "completed", "err": 0.2, "err_ucb": 0.21, "n_params": 50, "flops": 100,
              "config": {"flow_steps": 1, "flow_solver": "euler"}, "flow_evals": evals}
    assert told_error(result) == (pytest.approx(0.06), "2:euler")  # ties: the cheaper one
    row = setting_result(result, "4:euler")
    assert (row["err_ucb"], row["flops"], row["n_params"]) == (pytest.approx(0.06), 400, 50)
    assert row["config"]["flow_steps"] == 4 and row["reached"] == {"0.1": True}
    assert result["err_ucb"] == 0.21 and result["flops"] == 100  # the primary is untouched
    assert setting_result(result, "8:euler") is None  # not scored there: no made-up row
    pruned = setting_result({"status": "pruned", "n_params": 70, "flow_evals": []}, "2:euler")
    assert pruned["status"] == "pruned" and pruned["n_params"] == 70  # it still bounds N
    bad = {**result, "flow_evals": [{**evals[2], "err_ucb": "inf"}]}
    assert setting_result(bad, "4:euler")["status"] == "failed"
    assert told_error({"status": "failed", "err_ucb": None}) == (None, None)


class InProcess:
    """Stands in for the Ray trial task: trains in this process (so training calls can
    be counted) and hands the driver an object ref, as a task would."""

    def __init__(self):
        self.configs: list[dict] = []

    def options(self, **_):
        return self

    def remote(self, cfg: dict, threads: int = 1, key: str = ""):
        self.configs.append(cfg)
        return ray.put(trial_mod.run_trial(TrialConfig.from_dict(cfg)).to_dict())


@pytest.fixture(scope="module")
def flow_sweep(tmp_path_factory, ray_local):
    """A tiny FlowAR sweep (2 trials, flow_steps [1, 2, 4], one-point search space)
    whose trials train in this process, counted; once for the tests below (the
    resume test, last, leaves the store as it found it)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _flow_sweep(tmp_path_factory.mktemp("flow"), mp)


def _flow_sweep(tmp_path, monkeypatch):
    trained = []
    real = trial_mod.train_one

    def counted(cfg, **kw):
        trained.append(cfg)
        return real(cfg, **kw)

    task = InProcess()
    monkeypatch.setattr(trial_mod, "train_one", counted)
    monkeypatch.setattr(driver_mod, "trial_task", task)
    monkeypatch.setattr(driver_mod, "population_task", None)  # FlowAR never packs
    spec = load_spec(tiny_spec(
        tmp_path, name="fs", trials=2, cells={"models": ["flowar"], "targets": ["mlp"],
                                               "lipschitz": [1.0]},
        eps=[10.0, 0.5, 1e-6], budget={"steps": 30, "warmup": 5, "eval_every": 10, "n_eval": 128},
        search={"width": {"low": 8, "high": 8}, "scales": {"low": 2, "high": 2},
                "interp": ["bicubic"], "flow_steps": [4, 1, 2]}))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    out = run_sweep(spec, settings)
    return spec, settings, out, trained, task


def _cells(store, name):
    return {c.variant: c for c in store.cells(store.sweep(name).id)}


def test_a_model_differing_only_in_flow_steps_is_trained_once(flow_sweep):
    spec, settings, out, trained, task = flow_sweep
    assert out.trials_recorded == 2 and len(task.configs) == 2
    assert len(trained) == 2  # two trainings for three settings, not six
    assert {(c.flow_steps, c.flow_solver, c.flow_evals) for c in trained} == {
        (1, "euler", ("1:euler", "2:euler", "4:euler"))}
    store = ResultsStore(settings.db_url)
    cells = _cells(store, "fs")
    assert sorted(cells) == LABELS
    primary = cells[LABELS[0]]
    study = optuna.load_study(study_name=primary.study_name, storage=settings.db_url)
    rows = {t.number: t for t in store.trials(primary.id)}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert "flow_steps" not in t.distributions and "flow_steps" not in t.params
        # told: N and the best err_ucb over the settings, the setting in its attrs
        by_setting = t.user_attrs["flow_err_ucb"]
        assert t.values == [rows[t.number].n_params, min(by_setting.values())]
        assert by_setting[t.user_attrs["flow_setting"]] == min(by_setting.values())
        # the primary setting is consistent: the row's own error is its setting's
        assert by_setting["1:euler"] == rows[t.number].err_ucb


def test_each_setting_has_its_own_frontier_with_its_flops(flow_sweep):
    spec, settings, _, _, _ = flow_sweep
    store = ResultsStore(settings.db_url)
    cells = _cells(store, "fs")
    primary = {t.number: t for t in store.trials(cells[LABELS[0]].id)}
    evals = {n: {e["flow_steps"]: e for e in t.result["flow_evals"]} for n, t in primary.items()}
    tracker = Tracker(settings.tracking_uri, "varbench/fs")
    for steps, label in zip((1, 2, 4), LABELS):
        cell = cells[label]
        rows = store.trials(cell.id)
        assert [t.number for t in rows] == sorted(primary)  # the same trained models
        for t in rows:
            e = evals[t.number][steps]
            assert (t.err_ucb, t.flops, t.n_params) == (e["err_ucb"], e["flops"],
                                                        primary[t.number].n_params)
            assert t.config["flow_steps"] == steps
            assert t.mlflow_run_id == primary[t.number].mlflow_run_id  # one run per training
        assert cell.reference  # the cell's reference errors, as the study's
        parent = tracker.client.get_run(tracker.parent_run(cell.study_name, {}))
        assert parent.info.run_name == f"{label} · mlp · L=1"
        assert parent.info.status == "FINISHED" and "nstar.eps_10" in parent.data.metrics
    res = CliRunner().invoke(app, ["frontier", "fs", "--json", "--db", settings.db_url])
    assert res.exit_code == 0, res.output
    front = json.loads(res.stdout)
    assert sorted({r["variant"] for r in front}) == LABELS
    flops = {}
    for r in front:
        if r["reached"]:
            steps = int(r["variant"].split(" · ")[1].split()[0])
            assert r["config"]["flow_steps"] == steps
            assert r["flops"] == evals[r["trial"]][steps]["flops"]
            flops[steps] = r["flops"]
    assert flops[1] < flops[2] < flops[4]  # inference FLOPs grow with the steps
    table = CliRunner().invoke(app, ["frontier", "fs", "--db", settings.db_url])
    assert all(label in table.stdout for label in LABELS)
    status = CliRunner().invoke(app, ["status", "fs", "--db", settings.db_url])
    assert status.exit_code == 0, status.output
    assert sorted(r["model"] for r in sweep_status(store, "fs")) == LABELS
    # nightly comparisons and the scaling fits see each setting as its own group
    comp = compare(store, "fs", "fs", n_boot=20)
    assert {p.cell for p in comp.points} == {f"{label}:mlp:L=1" for label in LABELS}
    assert not comp.regression


def test_resume_adds_no_setting_rows_and_restores_missing_ones(flow_sweep):
    spec, settings, _, trained, _ = flow_sweep
    store = ResultsStore(settings.db_url)

    def counts():
        return {label: len(store.trials(c.id)) for label, c in _cells(store, "fs").items()}

    before = counts()
    assert before == dict.fromkeys(LABELS, 2)
    again = run_sweep(spec, settings)
    assert again.trials_run == 0 and counts() == before and len(trained) == 2
    # a store whose setting rows are missing (written before they existed) gets them
    # back from the study's rows, once, without training again
    lost = _cells(store, "fs")[LABELS[2]]
    with store._session() as s, s.begin():
        s.execute(delete(TrialRow).where(TrialRow.cell_id == lost.id, TrialRow.number == 1))
    assert counts()[LABELS[2]] == 1
    run_sweep(spec, settings)
    run_sweep(spec, settings)
    assert counts() == before and len(trained) == 2
    assert store.trials(lost.id)[1].mlflow_run_id is not None


def test_with_seed_replicas_each_setting_reports_its_best_replica():
    cfg = TrialConfig(model="flowar", width=8, scales=2, steps=10, warmup=2, eval_every=100,
                      n_eval=64, replicas=2, flow_steps=1, flow_evals=("1:euler", "4:euler"))
    r = trial_mod.run_trial(cfg)
    assert r.status == "completed" and len(r.flow_evals) == 2
    for e in r.flow_evals:
        assert len(e["replica_err_ucb"]) == 2 and e["err_ucb"] == min(e["replica_err_ucb"])
    assert r.flow_evals[0]["err_ucb"] == r.err_ucb  # the own setting: the best replica's
    row = setting_result({**r.to_dict(), "config": cfg.to_dict()}, "4:euler")
    assert row["replica_err_ucb"] == r.flow_evals[1]["replica_err_ucb"]  # its interval's
