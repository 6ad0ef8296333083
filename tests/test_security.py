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


def test_mask_url():
    assert SECRET not in mask_url(f"postgresql://u:{SECRET}@h:5432/db")
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


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
    # nothing recorded in the workdir's results store
    db = work / "varbench.db"
    if flag == "--tracking":  # the SQLite store is pinged (which creates the file) before MLflow
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    else:  # Ray is checked before the store is opened; --db puts the store elsewhere
        assert not db.exists()
