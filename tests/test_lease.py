"""One driver per sweep: the lease in the results store (issue 15, item 1).

The lease is taken atomically (SQLite BEGIN IMMEDIATE, a PostgreSQL advisory
transaction lock); a second driver is refused in one line naming the holder,
or waits with --wait-lock; recovery only ever touches trials whose owner's
lease has expired, so the store and Optuna agree trial by trial.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import ROOT, TINY, assert_user_error
from tests.test_reliability import SLOW, VARBENCH, _recorded, _start, _wait_for
from tests.test_sweep_e2e import check_sweep
from varbench.orchestrator.lease import Lease
from varbench.orchestrator.settings import resolve_settings
from varbench.orchestrator.store import LeaseRow, ResultsStore, now
from varbench.sweeps.spec import load_spec


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'varbench.db'}"
    return request.getfixturevalue("pg_url")


def _store(url: str) -> ResultsStore:
    store = ResultsStore(url)
    store.migrate()
    return store


def test_second_driver_is_refused_naming_the_holder_until_expiry(db_url):
    store = _store(db_url)
    a = Lease(store, "s", ttl_s=1.5)
    a.acquire()
    a._stop.set()  # no more heartbeats: as if its host died
    a._thread.join()
    b = Lease(store, "s", ttl_s=1.5)
    with pytest.raises(Exception) as exc:
        b.acquire()
    assert "lease is held by driver pid" in str(exc.value) and "--wait-lock" in str(exc.value)
    time.sleep(1.6)  # expired: b takes it
    b.acquire()
    assert store.lease("s").owner == b.owner
    assert not store.renew_lease("s", a.owner, 1.5)  # a's heartbeat now finds it lost
    b.release()
    assert store.lease("s") is None


def test_heartbeat_keeps_the_lease_alive(db_url):
    store = _store(db_url)
    a = Lease(store, "s", ttl_s=0.8)
    a.acquire()
    time.sleep(1.6)  # two expiries, renewed every 0.2 s
    with pytest.raises(Exception, match="already running"):
        Lease(store, "s", ttl_s=0.8).acquire()
    a.release()


def test_a_dead_driver_on_this_host_frees_its_lease_at_once(db_url):
    store = _store(db_url)
    dead = subprocess.Popen(["true"])
    dead.wait()
    store._run(lambda s: s.add(LeaseRow(sweep="s", owner="gone", host=os.uname().nodename,
                                        pid=dead.pid, expires_at=now().replace(year=2100))))
    b = Lease(store, "s", ttl_s=60)
    b.acquire()
    assert store.lease("s").owner == b.owner
    b.release()


def _race(url: str, q) -> None:
    store = ResultsStore(url)
    lease = Lease(store, "race", ttl_s=60)
    try:
        lease.acquire()
        q.put("won")
        time.sleep(2)  # hold it while the others try
    except Exception as exc:  # noqa: BLE001
        q.put(str(exc))


def test_taking_the_lease_is_atomic(db_url):
    _store(db_url)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db_url, q)) for _ in range(6)]
    for p in procs:
        p.start()
    out = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert out.count("won") == 1, out
    assert all("already running" in o for o in out if o != "won"), out


def agree(db_url: str, spec) -> None:
    """The store and Optuna agree trial by trial: every finished Optuna trial is a
    stored row with the same outcome, and no trial was failed by a recovery."""
    store = ResultsStore(db_url)
    for cell in store.cells(store.sweep(spec.name).id):
        rows = {r.number: r for r in store.trials(cell.id)}
        study = optuna.load_study(study_name=cell.study_name, storage=db_url)
        finished = {t.number: t for t in study.trials if t.state.is_finished()}
        assert set(finished) == set(rows), (sorted(finished), sorted(rows))
        for n, t in finished.items():
            ok = rows[n].status == "completed"
            assert (t.state == TrialState.COMPLETE) == ok, (n, t.state, rows[n].status)
            if ok:
                assert t.values == [float(rows[n].n_params), rows[n].err_ucb]
            assert "requeued_from" not in t.user_attrs


def test_two_drivers_started_together_run_the_sweep_once(tmp_path, db_url):
    work = tmp_path / "work"
    args = ["run", str(TINY), "--workdir", str(work), "--db", db_url]
    procs = [_start(args) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append((p.returncode, out, err))
    codes = sorted(r[0] for r in results)
    assert codes[0] == 0, results
    for code, out, err in results:
        if code != 0:  # refused: one line naming the holder, nothing else
            assert_user_error(subprocess.CompletedProcess([], code, out, err),
                              "'tiny' is already running", "driver pid")
    spec = load_spec(TINY)
    settings = resolve_settings(workdir=str(work), db=db_url)
    check_sweep(spec, settings, 3)
    agree(db_url, spec)


def test_staggered_driver_is_refused_then_waits_and_touches_no_live_trial(tmp_path, db_url):
    work = tmp_path / "work"
    db = db_url
    data = yaml.safe_load(SLOW.read_text())
    data["trials"] = 10  # long enough for two more drivers to start meanwhile
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(data))
    first = _start(["run", str(path), "--workdir", str(work), "--db", db])
    third = None
    try:
        _wait_for(lambda: _recorded(db, "slow") >= 1, 240, "a recorded trial")
        # mid-sweep: a third driver waits for the lease; a second is refused in one line
        third = _start(["run", str(path), "--workdir", str(work), "--db", db, "--wait-lock"])
        second = subprocess.run([VARBENCH, "run", str(path), "--workdir", str(work), "--db", db,
                                 "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert_user_error(second, "'slow' is already running", "driver pid", "--wait-lock")
        assert first.poll() is None  # still running, its live trials untouched
        out, err = first.communicate(timeout=900)
        assert first.returncode == 0, err
        out3, err3 = third.communicate(timeout=600)
        assert third.returncode == 0, err3
        assert "waiting for sweep 'slow'" in err3
        assert "0 new trials recorded" in out3
    finally:
        for p in (first, third):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    spec = load_spec(path)
    check_sweep(spec, resolve_settings(workdir=str(work), db=db), 10)
    agree(db, spec)


def test_two_different_specs_at_once_on_a_fresh_work_dir(tmp_path):
    """Issue 15 item 2: both created the local MLflow store at once and crashed
    ("table experiments already exists"); its creation is now serialised."""
    work = tmp_path / "work"
    paths = []
    for name in ("tiny-a", "tiny-b"):
        data = yaml.safe_load(TINY.read_text())
        data.update(name=name, trials=1)
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(data))
    procs = [_start(["run", str(p), "--workdir", str(work)]) for p in paths]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "Traceback" not in err
    for p in paths:
        check_sweep(load_spec(p), resolve_settings(workdir=str(work)), 1)


def test_ctrl_c_during_set_up_marks_the_sweep_and_prints_a_resume_hint_with_the_flags(tmp_path):
    """Issue 15 item 10: Ctrl-C before the trial loop exited 130 with no message and
    left the sweep "running"; the hint dropped --workdir / --tracking."""
    work, mlflow_dir = tmp_path / "work", tmp_path / "elsewhere"
    mlflow_dir.mkdir()
    tracking = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    db = f"sqlite:///{work / 'varbench.db'}"
    proc = _start(["run", str(SLOW), "--workdir", str(work), "--tracking", tracking])

    def opened() -> bool:  # the sweep row: written in set-up, after the lease
        try:
            return ResultsStore(db).sweep("slow") is not None
        except Exception:  # noqa: BLE001 - tables not there yet
            return False

    try:
        _wait_for(opened, 240, "the driver to open the sweep (set-up)")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    hint = next(ln for ln in err.splitlines() if "resume with:" in ln)
    assert f"--workdir {work}" in hint and f"--tracking {tracking}" in hint, hint
    store = ResultsStore(db)
    assert store.sweep("slow").status == "interrupted"
    assert store.lease("slow") is None  # released: the resume is not refused
    again = hint.split("resume with: ", 1)[1].split()
    res = subprocess.run([VARBENCH, *again[1:], "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    check_sweep(load_spec(SLOW), resolve_settings(workdir=str(work), tracking=tracking), 5)
