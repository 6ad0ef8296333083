"""Shared fixtures: a local Ray cluster, fresh PostgreSQL databases, tiny specs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "specs" / "tiny.yaml"
PG_ADMIN = os.environ.get("VARBENCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a Python/MLflow logging record ("2026/01/31 12:00:00 INFO mlflow...: ..."), not an error line
_LOG_RECORD = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} (DEBUG|INFO|WARNING) ")


def assert_user_error(result, *fragments: str, lines: int = 1) -> list[str]:
    """A user error as the CLI promises it: exit 2, ``lines`` non-empty stderr lines.

    Works on a ``CliRunner`` result (``exit_code``) and a ``subprocess`` result
    (``returncode``). Each line starts with ``error: ``; logging records other
    libraries write to stderr are not lines of the error. No traceback anywhere.
    Every fragment appears in some line (with ``lines=1``: in the line).
    Returns the error lines.
    """
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stderr = result.stderr or ""
    everything = stderr + (result.stdout or "")
    got = [ln for ln in stderr.splitlines() if ln.strip() and not _LOG_RECORD.match(ln)]
    assert code == 2, (code, everything, getattr(result, "exception", None))
    assert "Traceback" not in everything, everything
    assert len(got) == lines, got
    assert all(ln.startswith("error: ") for ln in got), got
    for frag in fragments:
        assert any(frag in ln for ln in got), (frag, got)
    return got


def tiny_spec(tmp_path: Path, **overrides) -> Path:
    """Write tests/specs/tiny.yaml with top-level overrides into tmp_path."""
    data = yaml.safe_load(TINY.read_text())
    data.update(overrides)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from varbench.orchestrator.cluster import connect

    connect(None, num_cpus=2)  # the project's own embedded-cluster path
    yield ray
    ray.shutdown()


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import psycopg

    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} (this machine kind starts it)")
    name = f"vbtest_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail("mlflow server exited during start-up")
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
