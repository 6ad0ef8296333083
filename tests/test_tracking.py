"""What people see in MLflow and Optuna after a sweep: live runs, learning curves,
readable names, standard tags, a parent run that summarises its study."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
from typer.testing import CliRunner

from tests.conftest import ROOT, TINY, assert_user_error, tiny_spec
from tests.test_sweep_e2e import check_sweep
from varbench.orchestrator.cli import app
from varbench.orchestrator.driver import run_sweep
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsStore
from varbench.orchestrator.tracking import Tracker
from varbench.sweeps.spec import load_spec

NAME = re.compile(r"^L=\d+ · #\d+ · d=\d+ K=\d \w+$")


def check_tracking(spec, settings) -> None:
    store = ResultsStore(settings.db_url)
    tracker = Tracker(settings.tracking_uri, f"varbench/{spec.name}")
    client = tracker.client
    rows = json.loads(CliRunner().invoke(
        app, ["frontier", spec.name, "--json", "--db", settings.db_url]).stdout)
    names = []
    for cell in store.cells(store.sweep(spec.name).id):
        parent = client.get_run(tracker.parent_run(cell.study_name, {}))
        tags, params = parent.data.tags, parent.data.params
        assert parent.info.run_name == f"var · mlp · L={cell.lipschitz:g}"
        assert "smallest number of trainable parameters" in tags["mlflow.note.content"]
        assert tags["mlflow.source.git.commit"] and tags["mlflow.user"]
        assert params["budget.steps"] == str(spec.budget.steps)
        assert params["search.width"] == "int 4..16 log"
        # the parent's N* metrics are the frontier varbench prints
        mine = [r for r in rows if r["cell"] == cell.study_name]
        want = {f"nstar.eps_{r['eps']:g}": r["n_star"] for r in mine if r["reached"]}
        assert want and {k: parent.data.metrics.get(k) for k in want} == want
        assert not any(f"nstar.eps_{r['eps']:g}" in parent.data.metrics
                       for r in mine if not r["reached"])  # censored: no made-up N*
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"frontier.json", "frontier.md", "spec.yaml", "err_vs_n.png"} <= artifacts
        study = optuna.load_study(study_name=cell.study_name, storage=settings.db_url)
        assert study.metric_names == ["n_params", "err_ucb"]
        assert study.user_attrs["sweep"] == spec.name and study.user_attrs["eps"] == spec.eps
        by_number = {t.number: t for t in study.trials}
        for row in store.trials(cell.id):
            run = client.get_run(row.mlflow_run_id)
            info, tags = run.info, run.data.tags
            names.append(info.run_name)
            assert NAME.match(info.run_name), info.run_name
            assert f"#{row.number} · d={row.config['width']} " in info.run_name
            assert info.status == ("FINISHED" if row.status == "completed" else "FAILED")
            # a live run: started when handed out, so it lasted at least the trial
            assert info.start_time < info.end_time
            assert (info.end_time - info.start_time) / 1000 >= row.seconds
            assert tags["mlflow.source.git.commit"] == tags["git.commit"] != ""
            assert tags["mlflow.user"] and tags["mlflow.source.name"] == "varbench"
            assert run.data.metrics["search.width"] == row.config["width"]
            loss = client.get_metric_history(info.run_id, "loss")
            assert len(loss) > 1 and sorted(m.step for m in loss) == [m.step for m in loss]
            assert len(client.get_metric_history(info.run_id, "monitor.err_ucb")) >= 1
            assert "curves.json" in {a.path for a in client.list_artifacts(info.run_id)}
            attrs = by_number[row.number].user_attrs
            assert attrs["mlflow_run_id"] == info.run_id and "err" in attrs
    assert len(names) == len(set(names)) == 2 * spec.trials  # unique across studies


def _dump(db) -> list[str]:
    """Every row of a SQLite database, as SQL text (its logical content)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.iterdump())


def _server_counts(tracker: Tracker) -> tuple[int, int]:
    exps = tracker.client.search_experiments(max_results=1000)
    runs = tracker.client.search_runs([e.experiment_id for e in exps], max_results=10000)
    return len(exps), len(runs)


READ_ONLY = (["doctor"], ["status"], ["frontier", "tiny"], ["frontier", "tiny", "--json"],
             ["report", "tiny", "--no-log", "--boot", "20"])


def _read_only_commands(tmp_path, work, tracking: str | None = None) -> None:
    for args in READ_ONLY:
        extra = ["--workdir", str(work)]
        if args[0] == "report":
            extra += ["--out", str(tmp_path / "rep")]
        if tracking and args[0] in ("doctor", "report"):
            extra += ["--tracking", tracking]
        res = CliRunner().invoke(app, [*args, *extra])
        assert res.exit_code == 0, (args, res.output)


def test_sweep_on_sqlite_shows_live_runs_curves_and_a_summary(tmp_path, ray_local):
    spec = load_spec(TINY)
    work = tmp_path / "work"
    settings = resolve_settings(workdir=str(work))
    run_sweep(spec, settings)
    check_tracking(spec, settings)
    # read-only commands leave both stores as they were: no experiment, run or table
    before = {db: _dump(work / db) for db in ("varbench.db", "mlflow.db")}
    _read_only_commands(tmp_path, work)
    assert {db: _dump(work / db) for db in before} == before


def test_sweep_on_a_real_mlflow_server(tmp_path, ray_local, mlflow_server):
    spec = load_spec(TINY)
    work = tmp_path / "work"
    settings = resolve_settings(workdir=str(work), tracking=mlflow_server)
    run_sweep(spec, settings)
    check_tracking(spec, settings)
    tracker = Tracker(mlflow_server, "varbench/tiny")
    before = _server_counts(tracker), _dump(work / "varbench.db")
    _read_only_commands(tmp_path, work, mlflow_server)
    assert (_server_counts(tracker), _dump(work / "varbench.db")) == before


def test_read_only_commands_on_an_empty_work_dir_create_nothing(tmp_path):
    work = tmp_path / "work"
    res = CliRunner().invoke(app, ["doctor", "--workdir", str(work)])
    assert res.exit_code == 0, res.output
    assert "no store yet" in res.stdout
    for args in (["status"], ["frontier", "tiny"]):
        res = CliRunner().invoke(app, [*args, "--workdir", str(work)])
        assert res.exit_code == 2 and "no results store here yet" in res.stderr
    assert not work.exists()


def test_a_store_that_needs_a_migration_says_so_in_one_line(tmp_path, ray_local):
    work = tmp_path / "work"
    run_sweep(load_spec(tiny_spec(tmp_path, trials=1)), resolve_settings(workdir=str(work)))
    with sqlite3.connect(work / "varbench.db") as conn:  # as an older varbench left it
        conn.execute("update varbench_alembic_version set version_num = '0000_older'")
    before = _dump(work / "varbench.db")
    for args in (["status"], ["frontier", "tiny"]):
        res = CliRunner().invoke(app, [*args, "--workdir", str(work)])
        assert_user_error(res, "needs a migration", "0000_older")
    res = CliRunner().invoke(app, ["doctor", "--workdir", str(work)])
    assert res.exit_code == 1 and "FAILED" in res.stdout  # the results store line
    assert _dump(work / "varbench.db") == before


def _runs_by_status(mlflow_db) -> dict[str, int]:
    if not mlflow_db.exists():
        return {}
    with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True) as conn:
        try:
            return dict(conn.execute(
                "select status, count(*) from runs where run_uuid in "
                "(select run_uuid from tags where key = 'varbench.trial') group by status"))
        except sqlite3.OperationalError:  # tables not made yet
            return {}


def test_running_run_visible_mid_sweep_killed_driver_closed_on_resume(tmp_path):
    # trials of a few seconds each, one cell, so a run is RUNNING for a while
    spec_path = tiny_spec(tmp_path, name="live", trials=4, budget={
        "steps": 300, "warmup": 10, "eval_every": 1000, "n_eval": 256},
        search={"width": {"low": 20, "high": 40}, "scales": {"low": 3, "high": 3},
                "interp": ["bicubic"]}, cells={"models": ["var"], "targets": ["mlp"],
                                               "lipschitz": [1.0]})
    work = tmp_path / "work"
    mlflow_db = work / "mlflow.db"
    command = [os.path.join(os.path.dirname(sys.executable), "varbench"), "run",
               str(spec_path), "--workdir", str(work), "--no-progress"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not _runs_by_status(mlflow_db).get("RUNNING"):
            time.sleep(0.3)
        seen = _runs_by_status(mlflow_db)
        assert seen.get("RUNNING"), seen  # a live run, visible while its trial trains
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies with its run RUNNING
        proc.wait(timeout=30)
    left = _runs_by_status(mlflow_db)
    assert left.get("RUNNING")
    settings = resolve_settings(workdir=str(work))
    spec = load_spec(spec_path)
    subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600, check=True)  # resume
    check_sweep(spec, settings, 4)  # no RUNNING left, one run per recorded trial
    after = _runs_by_status(mlflow_db)
    assert after.get("KILLED", 0) >= 1 and "RUNNING" not in after
    tracker = Tracker(settings.tracking_uri, "varbench/live")
    killed = [r for r in tracker.child_runs("live:var:mlp:L=1") if r.info.status == "KILLED"]
    assert all("queued again" in r.data.tags["varbench.reason"] for r in killed)


def test_ui_is_light_one_web_worker_no_job_runner(tmp_path, monkeypatch):
    # the command line: one worker, no job runner, loopback
    seen = {}
    monkeypatch.setattr(os, "execv", lambda path, argv: seen.setdefault("argv", argv))
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    res = CliRunner().invoke(app, ["ui", "--workdir", str(tmp_path), "--port", "5999"])
    assert res.exit_code == 0, res.output
    argv = seen["argv"]
    assert argv[argv.index("--workers") + 1] == "1"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # and for real: it answers MLflow's API, as two processes (the CLI and one web worker)
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "varbench"), "ui",
                             "--workdir", str(tmp_path), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        answered = None
        while time.time() - t0 < 120 and answered is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                    data=b'{"max_results": 5}', headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    answered = r.status == 200 and time.time() - t0
            except OSError:
                time.sleep(0.3)
        assert answered, "the UI did not answer within 120 s"
        group = subprocess.run(["ps", "-e", "-o", "pgid="], capture_output=True, text=True).stdout
        assert sum(int(g) == proc.pid for g in group.split()) <= 2  # no job runner, 1 worker
        print(f"varbench ui answered in {answered:.1f} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_dashboard_binds_loopback_or_names_the_extra(tmp_path, monkeypatch):
    import shutil

    seen = {}
    monkeypatch.setattr(os, "execv", lambda path, argv: seen.setdefault("argv", argv))
    monkeypatch.setattr(shutil, "which", lambda name, path=None: f"/bin/{name}")
    res = CliRunner().invoke(app, ["dashboard", "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    argv = seen["argv"]
    assert argv[0].endswith("optuna-dashboard") and argv[1].startswith("sqlite:///")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    assert_user_error(CliRunner().invoke(app, ["dashboard", "--workdir", str(tmp_path)]),
                      "varbench[dashboard]")


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_a_copied_work_dir_is_refused_in_one_line_without_touching_the_original(
        tmp_path, ray_local):
    import shutil

    spec_path = tiny_spec(tmp_path, trials=1)
    first, copy = tmp_path / "first", tmp_path / "copy"
    run_sweep(load_spec(spec_path), resolve_settings(workdir=str(first)))
    shutil.copytree(first, copy)
    before = _tree(first / "mlartifacts")
    for args in (["report", "tiny", "--boot", "20"], ["run", str(spec_path), "--no-progress"]):
        res = CliRunner().invoke(app, [*args, "--workdir", str(copy)])
        assert_user_error(res, str(first / "mlartifacts"), str(copy / "mlartifacts"))
    assert _tree(first / "mlartifacts") == before
    # what needs no MLflow write still works on the copy
    res = CliRunner().invoke(app, ["report", "tiny", "--no-log", "--boot", "20", "--workdir",
                                   str(copy)])
    assert res.exit_code == 0, res.output
