"""Faults: worker death, driver death, Ctrl-C, database trouble, concurrency, divergence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from tests.conftest import PG_ADMIN, ROOT, TINY, tiny_spec
from tests.test_sweep_e2e import check_sweep
from varbench.orchestrator.driver import run_sweep
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import ResultsStore
from varbench.sweeps.spec import load_spec

SLOW = ROOT / "tests" / "specs" / "slow.yaml"
VARBENCH = str(Path(sys.executable).parent / "varbench")


def _recorded(db_url: str, sweep: str) -> int:
    store = ResultsStore(db_url)
    try:
        row = store.sweep(sweep)
    except Exception:  # tables not there yet
        return 0
    return 0 if row is None else sum(len(store.trials(c.id)) for c in store.cells(row.id))


def _start(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([VARBENCH, *args, "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_worker_killed_mid_trial_is_retried_once(tmp_path, ray_local, monkeypatch):
    monkeypatch.setenv("VARBENCH_FAULT_KILL", "tiny:var:mlp:L=1#1")
    monkeypatch.setenv("VARBENCH_FAULT_DIR", str(tmp_path))
    spec = load_spec(TINY)
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    out = run_sweep(spec, settings)
    assert (tmp_path / "tiny_var_mlp_L_1_1.killed").exists()  # the first attempt did die
    assert out.trials_recorded == 6
    check_sweep(spec, settings, 3)  # once in the store and MLflow, nothing RUNNING in Optuna
    store = ResultsStore(settings.db_url)
    cell = next(c for c in store.cells(store.sweep("tiny").id) if c.study_name.endswith("L=1"))
    trial1 = next(t for t in store.trials(cell.id) if t.number == 1)
    assert trial1.status == "completed"  # the retry finished it


def test_driver_killed_mid_sweep_resumes_without_duplicates(tmp_path):
    work = tmp_path / "work"
    db = f"sqlite:///{work / 'varbench.db'}"
    proc = _start(["run", str(SLOW), "--workdir", str(work)])
    _wait_for(lambda: _recorded(db, "slow") >= 3, 240, "3 recorded trials")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray
    proc.wait(timeout=30)
    done_before = _recorded(db, "slow")
    assert 3 <= done_before < 10
    res = subprocess.run([VARBENCH, "run", str(SLOW), "--workdir", str(work), "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    spec = load_spec(SLOW)
    settings = resolve_settings(workdir=str(work))
    check_sweep(spec, settings, 5)
    requeued = sum(
        "requeued_from" in t.user_attrs
        for c in ("slow:var:mlp:L=1", "slow:var:mlp:L=2")
        for t in optuna.load_study(study_name=c, storage=db).trials
    )
    interrupted = sum(
        t.state == TrialState.FAIL
        for c in ("slow:var:mlp:L=1", "slow:var:mlp:L=2")
        for t in optuna.load_study(study_name=c, storage=db).trials
    )
    assert requeued == interrupted >= 1  # what was running when it died ran again


def test_ctrl_c_stops_quickly_and_prints_how_to_resume(tmp_path):
    work = tmp_path / "work"
    db = f"sqlite:///{work / 'varbench.db'}"
    proc = _start(["run", str(SLOW), "--workdir", str(work)])
    _wait_for(lambda: _recorded(db, "slow") >= 2, 240, "2 recorded trials")
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.time() - t0 < 15
    assert proc.returncode == 130, err
    assert "resume with: varbench run" in err
    store = ResultsStore(db)
    assert store.sweep("slow").status == "interrupted"
    for c in store.cells(store.sweep("slow").id):
        numbers = [t.number for t in store.trials(c.id)]
        assert len(numbers) == len(set(numbers))
        study = optuna.load_study(study_name=c.study_name, storage=db)
        assert not study.get_trials(states=(TrialState.RUNNING,))
    subprocess.run([VARBENCH, "run", str(SLOW), "--workdir", str(work), "--no-progress"],
                   cwd=ROOT, capture_output=True, timeout=600, check=True)
    check_sweep(load_spec(SLOW), resolve_settings(workdir=str(work)), 5)


@pytest.mark.postgres
def test_postgres_connections_terminated_mid_sweep(tmp_path, ray_local, pg_url):
    spec = load_spec(tiny_spec(tmp_path, trials=4))
    settings = resolve_settings(workdir=str(tmp_path / "work"), db=pg_url)
    dbname = pg_url.rsplit("/", 1)[1]
    stop = threading.Event()
    kills = []

    def first_trial_recorded() -> bool:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM vb_trials").fetchone()[0] > 0
        except psycopg.Error:  # the schema is not there yet
            return False

    def terminator():
        # mid-sweep: from the first recorded trial on (killing every 0.4 s from 1 s after
        # the start, once in a full-suite run, failed every retry of a study's creation)
        while not stop.is_set() and not first_trial_recorded():
            time.sleep(0.1)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall()
                kills.append(len(rows))
                time.sleep(0.4)

    result = {}
    driver = threading.Thread(target=lambda: result.setdefault("out", run_sweep(spec, settings)))
    driver.start()
    th = threading.Thread(target=terminator)
    th.start()
    driver.join(timeout=300)
    stop.set()
    th.join()
    assert not driver.is_alive()
    assert sum(kills) > 0, "no connection was ever terminated"
    assert result["out"].trials_recorded == 8
    check_sweep(spec, settings, 4)


@pytest.mark.postgres
def test_two_sweeps_at_once_on_one_postgres_and_mlflow_server(tmp_path, pg_url, mlflow_server):
    specs = [tiny_spec(tmp_path, name=f"conc{i}", seed=i) for i in (1, 2)]
    procs = [_start(["run", str(s), "--db", pg_url, "--tracking", mlflow_server,
                     "--workdir", str(tmp_path / f"w{i}")]) for i, s in enumerate(specs)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for s in specs:
        spec = load_spec(s)
        check_sweep(spec, resolve_settings(workdir=str(tmp_path), db=pg_url, tracking=mlflow_server), 3)


def test_diverging_trials_are_failed_with_reason_and_sweep_goes_on(tmp_path, ray_local):
    spec = load_spec(tiny_spec(tmp_path, name="diverge", cells={
        "models": ["var"], "targets": ["linear", "mlp"], "lipschitz": [1e30]}))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    out = run_sweep(spec, settings)
    assert out.trials_recorded == 6 and not out.interrupted
    store = ResultsStore(settings.db_url)
    cells = {c.target: c for c in store.cells(store.sweep("diverge").id)}
    lin = store.trials(cells["linear"].id)
    assert all(t.status == "failed" and "non-finite" in t.reason for t in lin)
    study = optuna.load_study(study_name=cells["linear"].study_name, storage=settings.db_url)
    assert {t.state for t in study.trials} == {TrialState.FAIL}
    assert all(not p.reached for p in store.frontier(cells["linear"].id))



def test_a_driver_error_after_a_task_was_sent_cancels_it(tmp_path, ray_local, monkeypatch):
    """An error other than Ctrl-C (here MLflow failing to make the trial's run, right after
    its task went out) ends the driver; the task it sent must not train on for nobody."""
    import ray

    from varbench.orchestrator.driver import Driver
    from varbench.orchestrator.recorder import Recorder

    spec = load_spec(tiny_spec(tmp_path, name="orphan", budget={"steps": 3000, "eval_every": 500,
                                                                "n_eval": 64}))
    driver = Driver(spec, resolve_settings(workdir=str(tmp_path / "work")))
    sent = []

    def broken(self, *args, **kw):
        sent.extend(driver._inflight)
        raise RuntimeError("tracking store went away")

    monkeypatch.setattr(Recorder, "start_trial", broken)
    with pytest.raises(RuntimeError, match="went away"):
        driver.run()
    assert sent
    with pytest.raises(ray.exceptions.RayError):  # cancelled, not a result minutes later
        ray.get(sent[0], timeout=60)
