"""End-to-end sweeps on real local services: Ray, Optuna storage, MLflow, SQL."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests.conftest import TINY, assert_user_error, tiny_spec
from varbench.orchestrator.cli import app
from varbench.orchestrator.driver import run_sweep
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsStore
from varbench.orchestrator.tracking import Tracker
from varbench.sweeps.frontier import frontier
from varbench.sweeps.spec import load_spec


def check_sweep(spec, settings, trials_per_cell: int) -> dict[str, int]:
    """The invariants: frontier in the store = frontier from the trials; one MLflow child
    run per trial under its study's parent; no Optuna trial left RUNNING."""
    store = ResultsStore(settings.db_url)
    sweep = store.sweep(spec.name)
    cells = store.cells(sweep.id)
    assert len(cells) == len(spec.cell_keys())
    tracker = Tracker(settings.tracking_uri, f"varbench/{spec.name}")
    counts = {}
    for cell in cells:
        rows = store.trials(cell.id)
        assert len(rows) == trials_per_cell
        stored = [(f.eps, f.reached, f.n_star, f.trial_number) for f in store.frontier(cell.id)]
        computed = [(p.eps, p.reached, p.n_star, p.trial_number)
                    for p in frontier(store.trial_points(cell.id), spec.eps)]
        assert stored == computed and len(stored) == len(spec.eps)
        children = tracker.child_runs(cell.study_name)
        assert not [r for r in children if r.info.status == "RUNNING"]  # every run ended
        # one run per recorded trial; KILLED ones were trials interrupted and re-queued
        children = [r for r in children if r.info.status != "KILLED"]
        keys = sorted(r.data.tags["varbench.trial"] for r in children)
        assert keys == sorted(f"{cell.study_name}#{r.number}" for r in rows)
        assert {r.info.run_id for r in children} == {r.mlflow_run_id for r in rows}
        study = optuna.load_study(study_name=cell.study_name, storage=settings.db_url)
        assert not study.get_trials(states=(TrialState.RUNNING,))
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == sum(
            r.status == "completed" for r in rows)
        counts[cell.study_name] = len(children)
    return counts


def test_tiny_sweep_local_sqlite_then_rerun_adds_nothing(tmp_path, ray_local):
    spec = load_spec(TINY)
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    out = run_sweep(spec, settings)
    assert out.trials_recorded == 6 and not out.interrupted
    before = check_sweep(spec, settings, 3)
    again = run_sweep(spec, settings)
    assert again.trials_run == 0 and again.trials_recorded == 0
    assert check_sweep(spec, settings, 3) == before
    # the CLI reads the same frontier back
    res = CliRunner().invoke(app, ["frontier", "tiny", "--json", "--workdir", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 2 * len(spec.eps)
    assert all((r["n_star"] is None) != r["reached"] for r in rows)
    for r in rows:  # every point carries its interval, and the interval holds the point
        lo, hi = r["n_star_ci"]
        if r["reached"]:
            assert lo is not None and lo <= r["n_star"] and (hi is None or r["n_star"] <= hi)
            assert 0 < r["n_eff"] < r["n_star"]
    table = CliRunner().invoke(app, ["frontier", "tiny", "--workdir", str(tmp_path / "work")])
    assert table.exit_code == 0, table.output


def test_changed_spec_under_same_name_is_refused(tmp_path, ray_local):
    work = str(tmp_path / "work")
    run_sweep(load_spec(tiny_spec(tmp_path, trials=1)), resolve_settings(workdir=work))
    res = CliRunner().invoke(app, ["run", str(tiny_spec(tmp_path, trials=2, seed=9)), "--workdir", work])
    assert_user_error(res, "different spec")


@pytest.mark.postgres
def test_tiny_sweep_on_postgres_with_mlflow_server(tmp_path, ray_local, pg_url, mlflow_server):
    spec = load_spec(TINY)
    settings = resolve_settings(workdir=str(tmp_path / "work"), db=pg_url, tracking=mlflow_server)
    out = run_sweep(spec, settings)
    assert out.trials_recorded == 6
    before = check_sweep(spec, settings, 3)
    assert run_sweep(spec, settings).trials_recorded == 0
    assert check_sweep(spec, settings, 3) == before
    assert not (tmp_path / "work" / "varbench.db").exists()  # nothing went to SQLite


def test_trials_of_one_small_shape_are_packed_into_one_worker_call(tmp_path, ray_local):
    # a one-point search space: every trial has the same shape, so the driver packs
    # the trials it asks together into population tasks
    spec = load_spec(tiny_spec(tmp_path, name="packed", trials=4, search={
        "width": {"low": 8, "high": 8}, "scales": {"low": 2, "high": 2}, "interp": ["bicubic"]}))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    out = run_sweep(spec, settings)
    assert out.trials_recorded == 8
    check_sweep(spec, settings, 4)
    store = ResultsStore(settings.db_url)
    rows = [t for c in store.cells(store.sweep("packed").id) for t in store.trials(c.id)]
    assert any(t.result.get("population", 1) > 1 for t in rows)
    assert len({t.config["seed"] for t in rows}) == 8  # packed, still distinct trials


def test_trials_with_seed_replicas_keep_them_when_shapes_repeat(tmp_path, ray_local):
    """Same-shape trials with replicas are not packed together: each trains its own
    seeds (stacked inside its task) and reports every replica."""
    spec = load_spec(tiny_spec(tmp_path, name="reps", trials=2, budget={
        "steps": 20, "warmup": 5, "eval_every": 10, "n_eval": 64, "replicas": 2}, search={
        "width": {"low": 8, "high": 8}, "scales": {"low": 2, "high": 2}, "interp": ["bicubic"]}))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    assert run_sweep(spec, settings).trials_recorded == 4
    store = ResultsStore(settings.db_url)
    rows = [t for c in store.cells(store.sweep("reps").id) for t in store.trials(c.id)]
    assert all(len(t.result["replica_err_ucb"]) == 2 for t in rows)


def test_a_failed_reference_task_is_logged_and_a_resume_computes_it(tmp_path, ray_local,
                                                                     monkeypatch, caplog):
    """The first trials go out before the reference errors are collected: a reference
    task that fails must not strand them. The sweep ends with its trials recorded and
    the cell without reference errors; the next run of the sweep computes them."""
    import ray

    from varbench.orchestrator import driver as driver_mod

    @ray.remote
    def broken_reference(*args, **kwargs):
        raise RuntimeError("reference computation broke")

    spec = load_spec(tiny_spec(tmp_path, trials=1))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    monkeypatch.setattr(driver_mod, "reference_task", broken_reference)
    with caplog.at_level("WARNING", logger="varbench.driver"):
        out = run_sweep(spec, settings)
    assert out.trials_recorded == 2 and not out.interrupted
    assert "reference errors of" in caplog.text and "left for a resume" in caplog.text
    store = ResultsStore(settings.db_url)
    cells = store.cells(store.sweep(spec.name).id)
    assert all(not c.reference for c in cells)
    check_sweep(spec, settings, 1)
    monkeypatch.undo()
    again = run_sweep(spec, settings)
    assert again.trials_run == 0
    cells = store.cells(store.sweep(spec.name).id)
    assert all(c.reference.get("affine") for c in cells)


def test_the_cli_leaves_running_a_cluster_it_did_not_start(tmp_path, ray_local):
    """``varbench run`` shuts Ray down itself (Ray's exit hook is slower) only where
    it started it: a cluster that was up before, as here, stays up."""
    res = CliRunner().invoke(app, ["run", str(tiny_spec(tmp_path, trials=1)), "--workdir",
                                   str(tmp_path / "work"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "N*(ε, L)" in res.output
    assert ray_local.is_initialized()
