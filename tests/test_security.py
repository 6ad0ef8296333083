"""Passwords masked everywhere, loopback by default, no pickles, clear address errors."""

from __future__ import annotations

import ast
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, TINY, assert_user_error, free_port
from varbench.orchestrator import cli
from varbench.orchestrator.store import Base, mask_url
from varbench.orchestrator.tracking import Tracker

SECRET = "s3cr3t-Pw-91"
VARBENCH = str(Path(sys.executable).parent / "varbench")


@pytest.mark.parametrize("form", [
    "postgresql://u:{pw}@h:5432/db",
    "postgresql+psycopg://u:{pw}@h/db?sslmode=require",
    "postgresql://u:p@{pw}@h/db",  # an unencoded @ in the password
    "postgresql://u@h/db?password={pw}",
    "postgresql://u@h/db?sslmode=require&PASSWORD={pw}&x=1",
    "http://h:5000/?access_token={pw}",
    "https://user:{pw}@mlflow.example:443",
    "host=h port=5432 password={pw} dbname=x",
    "host=h password = '{pw} with space' user=u",
    "error: cannot reach postgresql://u:{pw}@127.0.0.1:1/x (refused)",
])
def test_mask_url_covers_userinfo_query_and_dsn(form):
    masked = mask_url(form.format(pw=SECRET))
    assert SECRET not in masked and "***" in masked, masked


def test_mask_url_leaves_urls_without_password_alone():
    for url in ("sqlite:///x.db", "postgresql://u@h/db", "http://127.0.0.1:5000",
                "postgresql://h/db?sslmode=require"):
        assert mask_url(url) == url


def test_spec_is_stored_and_hashed_without_credentials(tmp_path):
    """Issue 15 item 3: vb_sweeps.spec held the password, and a rotated one made the
    same sweep "changed"."""
    import yaml

    from varbench.orchestrator.recorder import Recorder
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import parse_spec

    data = yaml.safe_load(TINY.read_text())
    specs = [parse_spec({**data, "storage": f"postgresql://u:{pw}@db/x?password={pw}",
                         "tracking": f"http://u:{pw}@mlflow:5000"})
             for pw in (SECRET, SECRET + "-rotated")]
    assert specs[0].spec_hash() == specs[1].spec_hash()
    rec = Recorder(resolve_settings(str(tmp_path / "work")), "tiny")
    rec.store.migrate()
    for spec in specs:  # the rotated one is the same sweep: not refused as changed
        rec.open_sweep(spec)
    row = rec.store.sweep("tiny")
    assert SECRET not in repr(row.spec) and "***" in row.spec["storage"]
    with closing(sqlite3.connect(tmp_path / "work" / "varbench.db")) as conn:
        assert SECRET not in repr(conn.execute("SELECT * FROM vb_sweeps").fetchall())


def test_submit_ships_passwords_in_a_file_not_in_the_runtime_env(tmp_path, monkeypatch):
    """Issue 15 item 3: VARBENCH_DB_URL with its password was a runtime_env env var,
    which `ray job list` and the runtime_env agent's log print."""
    import json

    from varbench.orchestrator import submit as jobs
    from varbench.sweeps.spec import load_spec

    seen = {}

    class FakeJobs:
        def get_job_status(self, sid):
            raise RuntimeError("Job does not exist")

        def submit_job(self, **kwargs):
            seen["kwargs"] = kwargs
            pkg = Path(kwargs["runtime_env"]["py_modules"][0])
            seen["file"] = json.loads((pkg / jobs.SECRETS_FILE).read_text())

    monkeypatch.setattr(jobs, "client", lambda address: FakeJobs())
    db = f"postgresql://u:{SECRET}@db:5432/x"
    env = {"VARBENCH_DB_URL": db, "VARBENCH_TRACKING_URI": "http://mlflow:5000"}
    jobs.submit(load_spec(TINY), TINY, "http://127.0.0.1:1", ROOT, env)
    listed = repr(seen["kwargs"])  # what `ray job list` shows: entrypoint, runtime_env, metadata
    assert SECRET not in listed
    assert seen["kwargs"]["runtime_env"]["env_vars"] == {
        "VARBENCH_TRACKING_URI": "http://mlflow:5000", "VARBENCH_SECRETS": "shipped"}
    assert seen["file"] == {"VARBENCH_DB_URL": db}
    # the job's side: read into the environment, then the file is gone
    shipped = tmp_path / "_secrets.json"
    shipped.write_text(json.dumps(seen["file"]))
    monkeypatch.setenv("VARBENCH_SECRETS", "shipped")
    monkeypatch.setenv("VARBENCH_DB_URL", "unset")  # restored (removed) after the test
    jobs.load_shipped_secrets(shipped)
    assert os.environ["VARBENCH_DB_URL"] == db and not shipped.exists()


@pytest.mark.postgres
def test_password_never_appears_in_anything_a_run_produces(tmp_path, pg_url):
    # trust auth accepts any password, so a URL carrying one works for real
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    work = tmp_path / "work"
    env = {**os.environ, "VARBENCH_DB_URL": url}
    outputs = []
    for args in (["run", str(TINY), "--workdir", str(work), "--no-progress"],
                 ["frontier", "tiny", "--workdir", str(work)],
                 ["status", "--workdir", str(work)],
                 ["report", "tiny", "--workdir", str(work), "--boot", "20"],
                 ["doctor", "--workdir", str(work)]):
        res = subprocess.run([VARBENCH, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, (args, res.stderr)
        outputs.append(res.stdout + res.stderr)
    bad = subprocess.run([VARBENCH, "run", str(TINY), "--workdir", str(work)], cwd=ROOT,
                         env={**env, "VARBENCH_DB_URL": f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/x"},
                         capture_output=True, text=True, timeout=120)
    assert_user_error(bad, "cannot reach the results database")
    outputs.append(bad.stdout + bad.stderr)
    for text in outputs:
        assert SECRET not in text
    from varbench.orchestrator.store import ResultsView

    assert SECRET not in repr(ResultsView(url).sweep("tiny").spec)
    # every file the run wrote: reports, the MLflow database and artifacts
    for f in work.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    # MLflow params and tags, read back through the API
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}", "varbench/tiny")
    runs = tracker.client.search_runs([tracker.experiment_id()], max_results=1000)
    assert runs
    for r in runs:
        assert SECRET not in repr(r.data.params) + repr(r.data.tags)


def test_ui_binds_loopback_by_default(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(os, "execv", lambda path, argv: seen.setdefault("argv", argv))
    res = CliRunner().invoke(cli.app, ["ui", "--workdir", str(tmp_path), "--port", "5999"])
    assert res.exit_code == 0, res.output
    argv = seen["argv"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_embedded_ray_binds_loopback(ray_local):
    node = ray_local._private.worker.global_worker.node
    assert node.node_ip_address == "127.0.0.1"
    assert node.gcs_address.startswith("127.0.0.1:")
    port = node.gcs_address.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    binds = [ln.split()[3] for ln in listening.splitlines()[1:] if ln.split()[3].endswith(f":{port}")]
    assert binds and all("127.0.0.1" in b for b in binds), binds


def test_no_pickles_in_the_store_or_the_code():
    for table in Base.metadata.tables.values():
        for col in table.columns:
            assert type(col.type).__name__ not in ("PickleType", "LargeBinary", "BLOB"), col
    for pkg in ("models", "workers", "orchestrator", "sweeps"):
        for f in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), f


@pytest.mark.parametrize("flag,value,needle", [
    ("--address", "127.0.0.1:{port}", "cannot reach Ray"),
    ("--db", "postgresql://u:pw@127.0.0.1:{port}/x", "cannot reach the results database"),
    ("--tracking", "http://127.0.0.1:{port}", "cannot reach the MLflow tracking server"),
])
def test_unreachable_addresses_are_one_line_before_any_work(tmp_path, flag, value, needle):
    work = tmp_path / "work"
    res = subprocess.run([VARBENCH, "run", str(TINY), "--workdir", str(work), flag,
                          value.format(port=free_port())], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert_user_error(res, needle)
    # nothing written: remote addresses are checked before a local store is created
    assert not work.exists()
